"""Trainer: only the prompt learns, one checkpoint per epoch, deterministic, resumable."""
import json
import os

import jax
import numpy as np
import pytest

from gbair_jax.models.bert import tiny_bert
from gbair_jax.models.classifier import build_classifier
from gbair_jax.train import batches, checkpoints
from gbair_jax.train.trainer import train_prompt
from gbair_jax.train.metrics import binary_auc, classification_metrics
from tests.helpers import synthetic_split

LABELS = ("negative", "positive")


@pytest.fixture(scope="module")
def setup():
  backbone = tiny_bert()
  spec = build_classifier(backbone, LABELS, prompt_length=4)
  frozen = backbone.load_params()
  tok = lambda s: batches.tokenize_split(s, backbone, 12)
  splits = {"train": tok(synthetic_split(96, 0)), "validation": tok(synthetic_split(40, 1, 1000)),
            "test": tok(synthetic_split(40, 2, 2000))}
  return spec, frozen, splits


def _train(setup, round_dir, **kw):
  spec, frozen, splits = setup
  kw.setdefault("num_epochs", 2)
  return train_prompt(spec, frozen, splits, str(round_dir), batch_size=16, progress=False,
                      tensorboard=False, **kw)


def test_only_the_prompt_is_trained_and_saved(setup, tmp_path):
  spec, frozen, _ = setup
  before = jax.tree.map(np.array, frozen)
  result = _train(setup, tmp_path / "round_0")
  # The frozen weights are bit-identical after training.
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, frozen))
  prompt0 = spec.initial_prompt(jax.random.PRNGKey(0), frozen)
  assert not np.allclose(result.prompt, prompt0), "the prompt must move"
  # The checkpoint holds the prompt and an optimizer state no bigger than a few prompts.
  mngr = checkpoints.manager(str(tmp_path / "round_0"))
  import orbax.checkpoint as ocp
  restored = mngr.restore(2, args=ocp.args.Composite(prompt=ocp.args.StandardRestore(),
                                                     opt_state=ocp.args.StandardRestore()))
  assert set(restored["prompt"]) == {"prompt"}
  opt_leaves = jax.tree.leaves(restored["opt_state"])
  assert all(np.size(x) in (1, result.prompt.size) for x in opt_leaves)
  backbone_size = sum(np.size(x) for x in jax.tree.leaves(frozen))
  assert sum(np.size(x) for x in opt_leaves) < backbone_size / 10


def test_checkpoint_per_epoch_with_learning_rates(setup, tmp_path):
  result = _train(setup, tmp_path / "round_0", num_epochs=3)
  infos = checkpoints.list_checkpoints(str(tmp_path / "round_0"))
  assert [i.epoch for i in infos] == [1, 2, 3]
  assert [i.step for i in infos] == [6, 12, 18]  # 96 examples / batch 16
  assert all(i.learning_rate > 0 for i in infos)
  tracin = checkpoints.load_tracin_checkpoints(str(tmp_path / "round_0"))
  np.testing.assert_array_equal(tracin[-1][0], result.prompt)
  metrics = json.load(open(tmp_path / "round_0" / "metrics.json"))
  assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
  assert set(metrics["test"]) == {"accuracy", "f1", "auc"}
  assert set(metrics["epochs"][0]["validation"]) == {"accuracy", "f1", "auc"}


def test_deterministic_and_resume_equals_uninterrupted(setup, tmp_path):
  full = _train(setup, tmp_path / "a", num_epochs=3)
  again = _train(setup, tmp_path / "b", num_epochs=3)
  np.testing.assert_array_equal(full.prompt, again.prompt)
  # "Killed" after epoch 1: a second call picks up at epoch 2.
  _train(setup, tmp_path / "c", num_epochs=1)
  resumed = _train(setup, tmp_path / "c", num_epochs=3)
  np.testing.assert_allclose(resumed.prompt, full.prompt, rtol=1e-6, atol=1e-7)
  epochs = json.load(open(tmp_path / "c" / "metrics.json"))["epochs"]
  assert [e["epoch"] for e in epochs] == [1, 2, 3]


def test_training_learns_the_synthetic_task(setup, tmp_path):
  result = _train(setup, tmp_path / "r", num_epochs=6)
  losses = [e["train_loss"] for e in result.metrics["epochs"]]
  assert losses[-1] < losses[0]


def test_metrics_against_hand_computed_values():
  logits = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
  labels = np.array([1, 1, 0, 0])
  m = classification_metrics(logits, labels)
  assert m["accuracy"] == 0.5
  assert m["f1"] == pytest.approx(0.5)  # tp=1 fp=1 fn=1
  # p(1) = [.73, .27, .88, .05]; positives {.73,.27}, negatives {.88,.05}: 2 of 4 pairs.
  assert m["auc"] == pytest.approx(0.5)
  assert binary_auc(np.array([0.1, 0.2, 0.3]), np.array([0, 1, 1])) == 1.0
  assert binary_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
