"""A registered task's SeqIO `get_dataset` yields the token ids the model is fed: the
gin-chosen backbone's vocabulary and special tokens, the same ids as a direct encode."""
import gin
import numpy as np
import pytest
import seqio

from gbair_jax import config
from gbair_jax.errors import UserError
from gbair_jax.train.experiment import build_experiment

LENGTH = 16
SMALL = ["load_data.max_train_examples = 40", "load_data.max_test_examples = 24",
         f"build_experiment.sequence_length = {LENGTH}", "CORRUPTION_RATE = 0.25"]

# How each backbone frames a text, written out independently of the library: (BOS first?,
# EOS last?). BERT: [CLS] text [SEP]; T5: text EOS; LLaMA (byte-level test vocabulary, no
# BOS in its metadata): the text alone.
FRAMING = {"minilm": (True, True), "tiny_bert": (True, True), "t5_tiny": (False, True),
           "tiny_llama": (False, False)}


def direct_encode(vocabulary, text: str, bos: bool, eos: bool) -> list[int]:
  """Python `vocabulary.encode`, framed and truncated as the model reads text."""
  prefix = [vocabulary.bos_id] if bos else []
  suffix = [vocabulary.eos_id] if eos else []
  return prefix + list(vocabulary.encode(text))[:LENGTH - len(prefix) - len(suffix)] + suffix


def padded(rows: list, pad_id: int) -> np.ndarray:
  out = np.full((len(rows), LENGTH), pad_id, np.int32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out


@pytest.mark.parametrize("model", sorted(FRAMING))
def test_task_dataset_is_what_the_model_is_fed_and_a_direct_encode(model):
  config.parse_gin(["gin/data/insults.gin", f"gin/models/{model}.gin"], SMALL)
  try:
    experiment = build_experiment()
    fed = experiment.tokenized_splits()
    task = seqio.get_mixture_or_task("insults")
    feature = task.output_features["inputs"]
    assert feature == experiment.spec.backbone.inputs_feature
    vocabulary = feature.vocabulary
    for split in ("train", "validation", "test"):
      examples = list(task.get_dataset(sequence_length={"inputs": LENGTH}, split=split,
                                       shuffle=False).as_numpy_iterator())
      by_id = {int(ex["example_id"]): ex for ex in examples}
      model_split = fed[split]
      # The run keeps a seeded subset of train and test; every row it has is the task's.
      rows = [by_id[int(i)] for i in model_split["example_id"]]
      assert {"inputs", "text", "label", "original_label", "is_corrupted"} <= set(rows[0])
      from_task = [ex["inputs"].tolist() for ex in rows]
      np.testing.assert_array_equal(padded(from_task, vocabulary.pad_id), model_split["tokens"])
      np.testing.assert_array_equal([len(r) for r in from_task], model_split["mask"].sum(1))
      direct = [direct_encode(vocabulary, ex["text"].decode("utf-8"), *FRAMING[model])
                for ex in rows]
      assert from_task == direct
      np.testing.assert_array_equal([ex["original_label"] for ex in rows],
                                    model_split["original_label"])
      if split != "train":  # corruption changes training labels after the task, only there
        np.testing.assert_array_equal([ex["label"] for ex in rows], model_split["label"])
    assert fed["train"]["is_corrupted"].sum() == 10  # round(0.25 x 40)
  finally:
    gin.clear_config()


def test_without_a_backbone_the_task_yields_text_only():
  config.parse_gin(["gin/data/insults.gin"], [])
  try:
    task = seqio.get_mixture_or_task("insults")
    assert dict(task.output_features) == {}
    example = next(task.get_dataset(sequence_length=None, split="validation",
                                    shuffle=False).as_numpy_iterator())
    assert "inputs" not in example and isinstance(example["text"], bytes)
  finally:
    gin.clear_config()


def test_a_task_tokenizing_for_another_backbone_is_refused():
  config.parse_gin(["gin/data/insults.gin", "gin/models/tiny_bert.gin"],
                   SMALL + ["import gbair_jax.models.t5", "inputs_feature.backbone = @tiny_t5()"])
  try:
    with pytest.raises(UserError, match="inputs_feature.backbone"):
      build_experiment()
  finally:
    gin.clear_config()
