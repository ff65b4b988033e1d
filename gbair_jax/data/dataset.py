"""The data entry point: run a registered SeqIO task and return its splits as numpy columns.

`load_data` is what the experiment, the recovery loop and `gbair data describe` call. Given
a sequence length it reads the task's tokenized `inputs` (the backbone's vocabulary, see
features.py) as `tokens`/`mask`. It corrupts the training split only (gin
`corrupt_labels.*`); validation and test are always the data as published.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any

import gin
import numpy as np

from gbair_jax.data import columns as columns_lib
from gbair_jax.data import corruption
from gbair_jax.data import example_ids as ids_lib
from gbair_jax.data import features as features_lib
from gbair_jax.data import registration
from gbair_jax.data import table_files
from gbair_jax.data import tf_columns
from gbair_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class LabeledData:
  """A task's splits as columns.

  Attributes:
    task: the task name.
    label_names: verbalizer per class, index = label id, e.g. ("not insult", "insult").
    splits: "train"/"validation"/"test" -> columns: example_id int64, text (object array
      of str), label int32 (current), original_label int32, is_corrupted bool; and when
      tokenized, tokens and mask int32 [N, sequence_length] (what the model is fed).
    rows_read: {path: data rows} of the CSV/TSV/JSONL files this load parsed.
    inputs_feature: the `features.TextFeature` the tokens were made with (None: text only).
  """

  task: str
  label_names: tuple[str, ...]
  splits: dict[str, dict[str, np.ndarray]]
  rows_read: dict[str, int] = dataclasses.field(default_factory=dict)
  inputs_feature: Any = None

  @property
  def num_classes(self) -> int:
    """C, the number of classes."""
    return len(self.label_names)


@gin.configurable
def load_data(task: str = gin.REQUIRED, task_module: str | None = "tasks",
              max_train_examples: int | None = None, subset_seed: int = 0,
              max_test_examples: int | None = None,
              sequence_length: int | None = None) -> LabeledData:
  """Runs the SeqIO task `task` and applies label corruption to its training split.

  Args:
    task: a registered task name (gin macro TASK), e.g. "insults".
    task_module: module imported first so that it registers its tasks (as T5X's
      MIXTURE_OR_TASK_MODULE); None if the caller registered them already.
    max_train_examples: keep only this many training examples (a seeded subset chosen by
      example id, before corruption), for quick CPU runs; None keeps all.
    subset_seed: which subset.
    max_test_examples: evaluate on a seeded subset of the test split (slow backbones on a
      CPU, where scoring thousands of test texts per round dominates); None keeps all.
    sequence_length: tokenize with the task's "inputs" feature (the gin-chosen backbone's,
      `inputs_feature.backbone`) to this many tokens, special tokens included (the caller,
      `build_experiment`, passes its own); None reads text only.

  Returns:
    The three splits; exactly round(CORRUPTION_RATE x N_train) training labels differ
    from `original_label`.
  """
  entry = registration.get_task(task, task_module)
  label_names = tuple(entry.label_names())
  table_files.take_rows_read()  # count only the files this load reads
  splits = {}
  with entry.seqio_task.features_resolved(text_only=sequence_length is None) as output_features:
    feature = output_features.get(features_lib.INPUTS)
    if sequence_length is not None:
      if feature is None:
        raise UserError(f"task {task!r} has no tokenized inputs: no backbone is bound to "
                        "inputs_feature.backbone (gin/models/*.gin bind it to %BACKBONE)")
      feature.check_length(sequence_length)
    lengths = None if feature is None else {features_lib.INPUTS: sequence_length}
    for split in columns_lib.SPLITS:
      dataset = entry.seqio_task.get_dataset(
          sequence_length=lengths, split=split, shuffle=False, use_cached=False, num_epochs=1)
      dataset = dataset.cache()  # the subset and corruption passes read it again
      if split == "train":
        if max_train_examples is not None:
          dataset = _subset(dataset, max_train_examples, subset_seed, "max_train_examples")
        dataset = corruption.corrupt_labels(dataset, num_classes=len(label_names))
      if split == "test" and max_test_examples is not None:
        dataset = _subset(dataset, max_test_examples, subset_seed, "max_test_examples")
      splits[split] = features_lib.to_model_columns(dataset, feature, sequence_length)
  _check_labels(task, label_names, splits)
  _check_not_empty(task, label_names, splits)
  return LabeledData(task=task, label_names=label_names, splits=splits,
                     rows_read=table_files.take_rows_read(), inputs_feature=feature)


def _check_not_empty(task: str, label_names: tuple[str, ...],
                     splits: dict[str, columns_lib.Columns]) -> None:
  """Every split has examples and every class has some: an empty split gives NaN metrics,
  and a class nobody has is usually a misspelled or extra label name."""
  for name in columns_lib.SPLITS:
    if splits[name]["label"].size == 0:
      raise UserError(f"task {task!r}: the {name} split is empty (check the data files and "
                      "the split fractions / max_*_examples bindings)")
  for label, label_name in enumerate(label_names):
    present = [name for name in columns_lib.SPLITS
               if np.any(splits[name]["original_label"] == label)]
    if not present:
      raise UserError(f"task {task!r}: class {label_name!r} (label {label}) has no example in "
                      f"any split; check the label names {list(label_names)}")
    missing = [name for name in columns_lib.SPLITS if name not in present]
    if missing:
      print(f"gbair: warning: task {task!r}: class {label_name!r} has no example in the "
            f"{' and '.join(missing)} split", file=sys.stderr)


def _subset(dataset, max_examples: int, seed: int, binding: str):
  """The `max_examples` examples with the smallest seeded id hashes (order-independent)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
    raise UserError(f"load_data.{binding} = {max_examples!r}: must be an integer >= 1")
  ids = tf_columns.from_dataset(dataset.map(lambda ex: {"example_id": ex["example_id"]}))["example_id"]
  keep = ids[np.argsort(ids_lib.seeded_hash(ids, seed, salt="train/subset"), kind="stable")[:max_examples]]
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(keep, tf.int64),
                                          tf.ones(len(keep), tf.int64)), default_value=0)
  return dataset.filter(lambda ex: table.lookup(ex["example_id"]) > 0)


def _check_labels(task: str, label_names: tuple[str, ...],
                  splits: dict[str, columns_lib.Columns]) -> None:
  """Ids unique across the task and labels in range: the contract later stages rely on."""
  names = list(splits)
  ids = np.concatenate([splits[name]["example_id"] for name in names])
  offsets = np.cumsum([0] + [splits[name]["example_id"].size for name in names])

  def where(index: int) -> str:
    split_index = int(np.searchsorted(offsets, index, side="right")) - 1
    return f"task {task!r}, split {names[split_index]!r}, row {index - offsets[split_index] + 1}"

  ids_lib.check_unique_ids(ids, where)
  for name in names:
    labels = splits[name]["original_label"]
    if labels.size and (labels.min() < 0 or labels.max() >= len(label_names)):
      raise UserError(f"task {task!r} split {name!r}: labels outside [0, {len(label_names)})")
