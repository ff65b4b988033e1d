"""The calibrated vote: voters scored leaving themselves out, the noise share per cell, and
suspects only where a wrong label is likelier than not."""
import json
import os

import gin
import numpy as np
import pytest

from gbair_jax.errors import UserError
from gbair_jax.recovery import gradient_vote, loop, vote_calibration
from tests.helpers import (SMALL_TRAINING_GIN, synthetic_split, synthetic_three_class_split,
                           tiny_experiment)


@pytest.fixture(autouse=True)
def small_gin():  # after conftest's clean_gin, which clears gin around every test
  gin.parse_config(SMALL_TRAINING_GIN + "selection_size.select_count = 6")


def test_flip_log_odds_finds_the_share_of_wrong_labels():
  rng = np.random.default_rng(0)
  clean, flipped = rng.normal(0.0, 1.0, 400), rng.normal(2.5, 1.0, 400)
  for share in (0.1, 0.4):
    wrong = rng.random(3000) < share
    scores = np.where(wrong, rng.normal(2.5, 1.0, 3000), rng.normal(0.0, 1.0, 3000))
    log_odds, estimate = vote_calibration.flip_log_odds(scores, clean, flipped)
    assert estimate["prior"] == pytest.approx(np.mean(wrong), abs=0.03)
    # Linear in the score (pooled variance): the vote's ranking is kept.
    order = np.argsort(scores)
    assert np.all(np.diff(log_odds[order]) >= 0)
    # The suspects (posterior > 0.5) are mostly wrong labels, and most wrong labels are found.
    suspects = log_odds > 0
    assert np.mean(wrong[suspects]) > 0.7 and np.mean(suspects[wrong]) > 0.6
  # Voters that do not separate the two (or too few of them): no suspects at all.
  for no_signal in ((flipped, clean), (clean[:1], flipped)):
    log_odds, estimate = vote_calibration.flip_log_odds(np.array([5.0, -5.0]), *no_signal)
    assert np.isneginf(log_odds).all() and estimate["prior"] is None


def test_voters_are_scored_leaving_themselves_out():
  rng = np.random.default_rng(1)
  voters = rng.normal(size=(2, 7, 5))                       # [checkpoints, M, k]
  voters /= np.linalg.norm(voters, axis=-1, keepdims=True)
  labels = np.array([0, 0, 0, 1, 1, 1, 1])
  rates = np.array([0.5, 0.25])
  for neighbours in (None, 2):
    samples = gradient_vote._voters_left_out(voters, labels, (0, 1), rates, 2, neighbours)  # pylint: disable=protected-access
    kernel = np.einsum("c,cmk,cnk->mn", rates, voters, voters)

    def vote(m, k):
      values = np.array([kernel[m, n] for n in range(7) if n != m and labels[n] == k])
      return np.sort(values)[-neighbours:].mean() if neighbours else values.mean()

    for a, b in ((0, 1), (1, 0)):
      clean, flipped = samples[(a, b)]
      np.testing.assert_allclose(clean, [vote(m, b) - vote(m, a) for m in np.flatnonzero(labels == a)])
      np.testing.assert_allclose(flipped, [vote(m, b) - vote(m, a) for m in np.flatnonzero(labels == b)])


def test_each_class_gets_the_suspects_its_noise_earns():
  """Class-conditional noise: label 0 holds many wrong labels, label 1 few. The suspects are
  the examples likelier wrong than right, mostly of label 0, fewer than a fixed budget."""
  rng = np.random.default_rng(2)
  labels = np.repeat([0, 1], 200)
  wrong = np.concatenate([rng.random(200) < 0.4, rng.random(200) < 0.05])
  scores = np.where(wrong, rng.normal(2.0, 1.0, 400), rng.normal(-1.0, 1.0, 400))
  samples = {(0, 1): (rng.normal(-1.0, 1.0, 100), rng.normal(2.0, 1.0, 100)),
             (1, 0): (rng.normal(-1.0, 1.0, 100), rng.normal(2.0, 1.0, 100))}
  vote = gradient_vote.Vote(scores=scores, others=1 - labels, voter_scores=samples)
  out, cells = vote_calibration.calibrated_scores(vote, labels, 0.5)
  suspects = np.isfinite(out)
  assert [c["suspects"] for c in cells] == [np.sum(suspects & (labels == 0)),
                                            np.sum(suspects & (labels == 1))]
  assert cells[0]["estimated_wrong"] == pytest.approx(np.sum(wrong[:200]), abs=15)
  assert cells[1]["estimated_wrong"] == pytest.approx(np.sum(wrong[200:]), abs=8)
  assert np.sum(suspects & (labels == 0)) > 4 * np.sum(suspects & (labels == 1))
  assert np.mean(wrong[suspects]) > 0.8
  # A stricter posterior keeps a subset.
  strict, _ = vote_calibration.calibrated_scores(vote, labels, 0.9)
  assert set(np.flatnonzero(np.isfinite(strict))) < set(np.flatnonzero(suspects))


@pytest.mark.parametrize("label_names,split", [
    (("negative", "positive"), synthetic_split),
    (("negative", "neutral", "positive"), synthetic_three_class_split)])
def test_a_round_changes_only_the_calibrated_suspects(tmp_path, label_names, split):
  out = str(tmp_path / "run")
  report = loop.run(out, num_rounds=1, strategy="class_vote_calibrated", references=(),
                    experiment=tiny_experiment(label_names, split, corrupt=12), progress=False)
  scores = np.load(os.path.join(out, "round_0", "scores.npz"))["score"]
  with open(os.path.join(out, "round_0", vote_calibration.CALIBRATION_FILE)) as f:
    calibration = json.load(f)
  cells = calibration["cells"]
  assert calibration["min_posterior"] == 0.5 and cells
  assert sum(c["examples"] for c in cells) == 48
  assert sum(c["suspects"] for c in cells) == np.isfinite(scores).sum() > 0
  assert np.all(scores[np.isfinite(scores)] > 0)  # log-odds above the break-even
  assert report["rounds"][0]["selected"] == min(6, int(np.isfinite(scores).sum()))
  with open(os.path.join(out, "report.md")) as f:
    section = f.read().split("## What the calibrated vote estimated")[1]
  rows = [line for line in section.splitlines() if line.startswith("| 0 |")]
  assert len(rows) == len(cells)
  assert rows[0].split(" | ")[1:3] == [label_names[cells[0]["label"]], label_names[cells[0]["other"]]]
  if len(label_names) == 3:
    assert {(c["label"], c["other"]) for c in cells} <= {
        (a, b) for a in range(3) for b in range(3) if a != b}


@pytest.mark.parametrize("binding,value,message", [
    ("class_vote_calibrated_strategy.min_posterior", 1.0, "min_posterior = 1.0: must be a number in"),
    ("class_vote_calibrated_strategy.neighbours", 0,
     "class_vote_calibrated_strategy.neighbours = 0: must be an integer >= 1")])
def test_bad_bindings_are_named(tmp_path, binding, value, message):
  gin.bind_parameter(binding, value)
  with pytest.raises(UserError, match=message):
    loop.run(str(tmp_path / "run"), num_rounds=1, strategy="class_vote_calibrated",
             references=(), experiment=tiny_experiment(("negative", "positive"), synthetic_split, corrupt=12),
             progress=False)
