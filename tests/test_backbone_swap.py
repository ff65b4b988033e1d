"""Trainer, checkpoints, TracIn and a recovery round run unchanged on every backbone.

One tiny random config per backbone family, chosen the way users choose: a gin model file.
"""
import os

import gin
import numpy as np
import pytest

from gbair_jax import config
from gbair_jax.data.dataset import LabeledData
from gbair_jax.data.ledger import read_ledger
from gbair_jax.models.classifier import build_classifier
from gbair_jax.recovery import loop
from gbair_jax.train.experiment import Experiment
from tests.helpers import synthetic_split

LABELS = ("negative", "positive")


@pytest.mark.parametrize("model_gin", ["tiny_bert", "t5_tiny", "tiny_llama"])
def test_one_tracin_round_on_each_backbone(model_gin, tmp_path):
  config.parse_gin([f"gin/models/{model_gin}.gin"], [
      "train_prompt.num_epochs = 2", "train_prompt.batch_size = 8",
      "train_prompt.tensorboard = False", "selection_size.select_count = 4",
      "tracin_opponents.top_k = 6"])
  try:
    spec = build_classifier(label_names=LABELS, prompt_length=3)
    data = LabeledData(task="synthetic", label_names=LABELS, splits={
        "train": synthetic_split(24, 0, corrupt=6), "validation": synthetic_split(16, 1, 1000),
        "test": synthetic_split(8, 2, 2000)})
    exp = Experiment(data=data, spec=spec, frozen=spec.backbone.load_params(), sequence_length=10)
    out = str(tmp_path / model_gin)
    report = loop.run(out, num_rounds=1, strategy="tracin_opponents", references=(),
                      experiment=exp, progress=False)
  finally:
    gin.clear_config()
  first = report["rounds"][0]
  assert first["num_misclassified_validation"] > 0
  assert first["selected"] == len(read_ledger(os.path.join(out, "ledger.jsonl"))) > 0
  assert np.isfinite(report["rounds"][1]["test"]["accuracy"])
  assert sorted(os.listdir(os.path.join(out, "round_0", "checkpoints")))[:2] == ["1", "2"]
