"""Trainer: only the prompt learns, one checkpoint per epoch, deterministic, resumable."""
import json
import os

import jax
import numpy as np
import pytest

from gbair_jax.data.features import tokenize_columns
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
  tok = lambda s: tokenize_columns(s, backbone.inputs_feature, 12)
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
  keys = {"accuracy", "f1", "auc", "threshold", "accuracy_at_threshold", "f1_at_threshold"}
  assert set(metrics["test"]) == keys
  assert set(metrics["epochs"][0]["validation"]) == keys


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


def _logits_for(p1):
  """Binary logits whose softmax gives p(class 1) = p1."""
  p1 = np.asarray(p1, np.float64)
  return np.stack([np.zeros_like(p1), np.log(p1 / (1 - p1))], axis=1)


def test_threshold_chosen_on_validation_by_hand():
  from gbair_jax.train.metrics import best_f1_threshold
  scores = np.array([0.9, 0.8, 0.6, 0.4, 0.3, 0.1])
  labels = np.array([1, 0, 1, 1, 0, 0])
  # Top-k cuts: F1 = 2tp / (k + 3) = 2/4, 2/5, 4/6, 6/7, 6/8, 6/9: the best is k = 4,
  # between 0.4 and 0.3.
  assert best_f1_threshold(scores, labels == 1) == pytest.approx(0.35)
  assert best_f1_threshold(scores[::-1], labels[::-1] == 1) == pytest.approx(0.35)
  # Ties in score form one cut; all positive is best here -> the lowest score.
  assert best_f1_threshold(np.array([0.2, 0.2, 0.1]), np.array([True, True, True])) == 0.1
  assert best_f1_threshold(np.array([0.2, 0.7]), np.array([False, False])) == 0.5
  validation = classification_metrics(_logits_for(scores), labels)
  assert validation["threshold"] == pytest.approx(0.35)
  assert validation["f1_at_threshold"] == pytest.approx(6 / 7)
  assert validation["accuracy_at_threshold"] == pytest.approx(5 / 6)
  assert validation["f1"] == pytest.approx(4 / 6)  # argmax (0.5): top 3, tp 2
  # Test at validation's threshold: p = [.45 (1), .36 (0), .2 (1), .7 (0)] -> predicted
  # 1, 1, 0, 1: tp 1, fp 2, fn 1 -> F1 2/5; accuracy 1/4. Argmax: only .7 -> F1 0, acc 1/4.
  test = classification_metrics(_logits_for([0.45, 0.36, 0.2, 0.7]), np.array([1, 0, 1, 0]),
                                threshold=validation["threshold"])
  assert test["threshold"] == pytest.approx(0.35)
  assert test["f1_at_threshold"] == pytest.approx(0.4)
  assert test["accuracy_at_threshold"] == pytest.approx(0.25)
  assert test["f1"] == 0.0 and test["accuracy"] == 0.25
  # More than two classes: argmax only.
  three = classification_metrics(np.eye(3), np.array([0, 1, 2]))
  assert set(three) == {"accuracy", "f1", "auc"}


def test_three_class_metrics_are_macro_one_vs_rest_by_hand():
  probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.5, 0.2, 0.3], [0.1, 0.3, 0.6]])
  labels = np.array([0, 1, 2, 2])
  got = classification_metrics(np.log(probs), labels)
  # Predicted 0, 1, 0, 2. Per-class F1 2/3, 1, 2/3. One-vs-rest AUC of p(c): 1, 1, and for
  # class 2 positives .3, .6 against .1, .3: (1 + 0.5 + 1 + 1) / 4.
  assert got["accuracy"] == pytest.approx(0.75)
  assert got["f1"] == pytest.approx(7 / 9)
  assert got["auc"] == pytest.approx((1 + 1 + 0.875) / 3)
  # A class absent from the labels has no AUC (no positive): the mean is over the others,
  # each 0.5 here (.6 and .1 against .2 and .5; .5 and .2 against .3 and .3).
  two_present = classification_metrics(np.log(probs), np.array([0, 1, 1, 0]))
  assert two_present["auc"] == pytest.approx((0.5 + 0.5) / 2)


def test_test_metrics_use_the_validation_threshold(setup, tmp_path):
  result = _train(setup, tmp_path / "t", num_epochs=2)
  threshold = result.metrics["epochs"][-1]["validation"]["threshold"]
  assert result.metrics["test"]["threshold"] == threshold
  for key in ("accuracy_at_threshold", "f1_at_threshold"):
    assert 0.0 <= result.metrics["test"][key] <= 1.0


def test_length_sorted_trimmed_batches_keep_every_token():
  mask = np.zeros((7, 40), np.int32)
  for row, length in enumerate([40, 3, 17, 9, 1, 30, 16]):
    mask[row, :length] = 1
  arrays = {"tokens": mask * 5, "mask": mask, "label": np.zeros(7, np.int32),
            "example_id": np.arange(7)}
  order = batches.length_order(arrays)
  np.testing.assert_array_equal(order, [4, 1, 3, 6, 2, 5, 0])
  widths, seen = [], []
  for batch in batches.iterate_batches(arrays, 3, order, trim_multiple=16):
    widths.append(batch["mask"].shape[1])
    kept = batch["mask"][batch["valid"]].sum(1)
    np.testing.assert_array_equal(kept, mask[batch["example_id"][batch["valid"]]].sum(1))
    seen.extend(batch["example_id"][batch["valid"]])
  assert widths == [16, 32, 40] and sorted(seen) == list(range(7))


def test_predict_logits_with_trimmed_padding_equals_full_width(setup):
  from gbair_jax.train.trainer import make_logits_fn, predict_logits
  spec, frozen, _ = setup
  backbone = tiny_bert()
  rng = np.random.default_rng(3)
  texts = [" ".join(rng.choice(["good", "bad", "movie", "the"], n)) for n in rng.integers(1, 30, 24)]
  split = tokenize_columns({"text": np.array(texts, object), "label": np.zeros(24, np.int32),
                            "example_id": np.arange(24)}, backbone.inputs_feature, 40)
  prompt = spec.initial_prompt(jax.random.PRNGKey(0), frozen)
  full = np.asarray(make_logits_fn(spec)(prompt, frozen, split["tokens"], split["mask"]))
  trimmed = predict_logits(spec, prompt, frozen, split, batch_size=8)
  assert len({int(m) for m in split["mask"].sum(1)}) > 5  # lengths really differ
  np.testing.assert_allclose(trimmed, full, rtol=1e-5, atol=1e-5)



def test_batches_know_their_count_for_progress_bars():
  # The TracIn and training bars show "k/K batches" because a pass's batches are sized.
  arrays = {"label": np.arange(10), "tokens": np.ones((10, 4), np.int32),
            "mask": np.ones((10, 4), np.int32), "example_id": np.arange(10)}
  passes = batches.iterate_batches(arrays, 4)
  assert len(passes) == batches.num_batches(10, 4) == 3
  assert [int(b["valid"].sum()) for b in passes] == [4, 4, 2]
  assert len(list(passes)) == 3  # re-iterable: a second pass gives the same batches
