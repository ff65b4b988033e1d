"""class_vote_counted: cleanlab's count per label, the vote's choice within it."""
import gin
import numpy as np
import pytest

from gbair_jax.recovery import gradient_vote, loop, out_of_fold, vote_counted
from tests.helpers import SMALL_TRAINING_GIN, synthetic_split, tiny_experiment


@pytest.fixture(autouse=True)
def small_gin():  # after conftest's clean_gin, which clears gin around every test
  gin.parse_config(SMALL_TRAINING_GIN + "selection_size.select_count = 30")


def test_counted_suspects_by_hand():
  scores = np.array([0.5, -1.0, 2.0, 0.1, -np.inf, 3.0, 1.0])
  labels = np.array([0, 0, 0, 1, 1, 1, 1])
  out = vote_counted.counted_suspects(scores, labels, {0: 2, 1: 1})
  np.testing.assert_array_equal(out, [0.5, -np.inf, 2.0, -np.inf, -np.inf, 3.0, -np.inf])
  none = vote_counted.counted_suspects(scores, labels, {0: 0, 1: 9})  # -inf is never chosen
  np.testing.assert_array_equal(np.isfinite(none), [False, False, False, True, False, True, True])


def test_a_round_takes_cleanlab_counts_and_the_votes_choice(tmp_path, monkeypatch):
  """The real strategy in a real round, its two inputs recorded as it computes them: the
  suspects are, per label, cleanlab's count of issues, chosen by the vote."""
  from cleanlab.filter import find_label_issues
  seen = {}
  real_vote, real_probs = gradient_vote.class_vote, out_of_fold.out_of_fold_probabilities

  def recording_vote(*args, **kwargs):
    seen["vote"] = real_vote(*args, **kwargs)
    return seen["vote"]

  def recording_probs(ctx, *args):
    seen["probs"], seen["labels"] = real_probs(ctx, *args), np.asarray(ctx.train["label"])
    return seen["probs"]

  monkeypatch.setattr(gradient_vote, "class_vote", recording_vote)
  monkeypatch.setattr(out_of_fold, "out_of_fold_probabilities", recording_probs)
  exp = tiny_experiment(("negative", "positive"), synthetic_split, num_train=64, corrupt=20)
  out = str(tmp_path / "run")
  report = loop.run(out, num_rounds=1, strategy="class_vote_counted", references=(),
                    experiment=exp, progress=False)
  issues = find_label_issues(seen["labels"], seen["probs"], filter_by="prune_by_noise_rate",
                             n_jobs=1)
  assert issues.any()
  scores = seen["vote"].scores
  for k in (0, 1):
    members = np.flatnonzero(seen["labels"] == k)
    expected = members[np.argsort(-scores[members], kind="stable")[:int(issues[members].sum())]]
    chosen = np.load(f"{out}/round_0/scores.npz")
    finite = np.isfinite(chosen["score"])
    train_ids = exp.tokenized_splits()["train"]["example_id"]
    ids_of_label = set(chosen["example_id"][finite].tolist()) & set(train_ids[members].tolist())
    assert ids_of_label == set(train_ids[expected].tolist())
  assert report["rounds"][0]["selected"] == min(30, int(issues.sum()))
