"""The tasks' "inputs" feature: the backbone's vocabulary and special tokens, tokenized by
SeqIO preprocessors, so a task's `get_dataset` yields the token ids the model trains on.

Which vocabulary is the gin-chosen backbone's: model gin files bind
`inputs_feature.backbone = %BACKBONE`, the same backbone `build_classifier` gets. With no
backbone bound (a data gin file alone, `gbair data describe`), tasks yield text only.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from gbair_jax.data import columns as columns_lib
from gbair_jax.data import tf_columns
from gbair_jax.errors import UserError

INPUTS = "inputs"


@dataclasses.dataclass(frozen=True)
class TextFeature(seqio.Feature):
  """A `seqio.Feature` for a backbone's text input.

  Attributes (beyond vocabulary and add_eos, e.g. BERT's [SEP] or T5's EOS):
    add_bos: prepend `vocabulary.bos_id` (BERT's [CLS], LLaMA's BOS where the model wants it).
    max_length: the longest sequence the backbone accepts (None: no limit).
    max_length_binding: the gin name of that limit, for error messages.
  """

  add_bos: bool = False
  max_length: int | None = None
  max_length_binding: str = ""

  @property
  def num_special_tokens(self) -> int:
    return int(self.add_bos) + int(self.add_eos)

  def check_length(self, length: int) -> None:
    """Refuses a sequence length the backbone cannot take or that leaves no text token."""
    if self.max_length is not None and length > self.max_length:
      raise UserError(f"text length {length} exceeds {self.max_length_binding or 'max_length'}"
                      f" = {self.max_length}")
    if length <= self.num_special_tokens:
      raise UserError(f"text length {length} leaves no room for text beside the "
                      f"{self.num_special_tokens} special token(s)")


@gin.configurable
def inputs_feature(backbone: Any = None) -> TextFeature | None:
  """The "inputs" feature of every classification task: `backbone.inputs_feature` (gin:
  `inputs_feature.backbone = %BACKBONE` in gin/models/*.gin); None when none is bound."""
  return None if backbone is None else backbone.inputs_feature


def output_features(feature: TextFeature | None) -> dict[str, seqio.Feature]:
  return {} if feature is None else {INPUTS: feature}


def tokenize_inputs(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
                    batch_size: int = 256) -> tf.data.Dataset:
  """Adds `inputs`: `text` encoded by the feature's vocabulary (`text` stays, for reports).

  `seqio.preprocessors.tokenize` with batches: the vocabularies' TensorFlow tokenizers
  run about twice as fast on a batch of strings as on one string per call.
  """
  feature = output_features.get(INPUTS)
  if feature is None:
    return dataset

  def encode(batch):
    return {**batch, INPUTS: tf.cast(feature.vocabulary.encode_tf(batch["text"]), tf.int32)}

  return dataset.batch(batch_size).map(encode, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def prepend_bos(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature]
                ) -> tf.data.Dataset:
  """Puts `vocabulary.bos_id` first where the feature asks for it (`add_bos`)."""
  feature = output_features.get(INPUTS)
  if not getattr(feature, "add_bos", False):
    return dataset
  bos = tf.constant([feature.vocabulary.bos_id], tf.int32)
  return dataset.map(lambda ex: {**ex, INPUTS: tf.concat([bos, ex[INPUTS]], 0)},
                     num_parallel_calls=tf.data.AUTOTUNE)


# text -> ids -> [BOS] ids, trimmed to sequence_length - 1 -> + EOS (where the feature adds
# them); Task.get_dataset then trims to sequence_length (decoders without EOS).
TOKENIZE_PREPROCESSORS = (
    tokenize_inputs,
    prepend_bos,
    seqio.preprocessors.append_eos_after_trim,
)


def to_model_columns(dataset: tf.data.Dataset, feature: TextFeature | None,
                     length: int | None) -> columns_lib.Columns:
  """Reads a task's examples into columns; `inputs` become `tokens` and `mask` [N, length]
  (right padded with the vocabulary's pad id), the arrays the model is fed."""
  if feature is not None and length is not None:
    pad_id = feature.vocabulary.pad_id

    def pad(example):
      example = dict(example)
      ids = example.pop(INPUTS)
      missing = [[0, length - tf.size(ids)]]
      example["tokens"] = tf.pad(ids, missing, constant_values=pad_id)
      example["mask"] = tf.pad(tf.ones_like(ids), missing)
      example["tokens"].set_shape([length])
      example["mask"].set_shape([length])
      return example

    dataset = dataset.map(pad, num_parallel_calls=tf.data.AUTOTUNE)
  return tf_columns.from_dataset(dataset)


def tokenize_columns(columns: Mapping[str, np.ndarray], feature: TextFeature,
                     length: int) -> columns_lib.Columns:
  """Adds `tokens` and `mask` [N, length] to in-memory columns (a `text` column), through
  the same SeqIO preprocessors as the registered tasks: for data built by hand (notebooks,
  tests) and single texts."""
  feature.check_length(length)
  task = seqio.Task(
      "gbair_in_memory",
      source=seqio.FunctionDataSource(
          dataset_fn=lambda split, shuffle_files, seed=None: tf_columns.to_dataset(columns),
          splits=("rows",)),
      output_features=output_features(feature),
      preprocessors=list(TOKENIZE_PREPROCESSORS))
  dataset = task.get_dataset(sequence_length={INPUTS: length}, split="rows", shuffle=False,
                             use_cached=False, num_epochs=1)
  tokenized = to_model_columns(dataset, feature, length)
  return {**columns, "tokens": tokenized["tokens"], "mask": tokenized["mask"]}


def encode_texts(feature: TextFeature, texts: Sequence[str], length: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(tokens, mask) int32 [len(texts), length] for a few texts, as the tasks tokenize them."""
  columns = tokenize_columns({"text": columns_lib.text_array(list(texts))}, feature, length)
  return columns["tokens"], columns["mask"]
