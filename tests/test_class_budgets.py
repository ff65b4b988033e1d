"""Per-class budgets (recovery/class_budgets.py): the split by hand, the noise estimate on
probabilities built to have it, the selection, and the switch's check (the switch in a real
run through gin: tests/test_recovery.py)."""
import numpy as np
import pytest

from gbair_jax.errors import UserError
from gbair_jax.recovery import actions, class_budgets


@pytest.mark.parametrize("weights,count,expected", [
    ([3.0, 1.0], 4, [3, 1]),
    ([1.0, 1.0, 1.0], 2, [1, 1, 0]),        # equal remainders: the lower classes first
    ([0.2, 0.5, 0.3], 7, [1, 4, 2]),        # 1.4, 3.5, 2.1: the largest remainder gets it
    ([5.0, 0.0], 3, [3, 0]),
    ([0.0, 0.0], 3, [0, 0]),                # no noise estimated: no shares at all
    ([-1.0, 2.0], 2, [0, 2]),
])
def test_split_budget_by_largest_remainders(weights, count, expected):
  np.testing.assert_array_equal(class_budgets.split_budget(np.array(weights), count), expected)


def test_the_confident_joint_finds_the_noise_where_it_was_put():
  # 40 examples labelled 0, 40 labelled 1; 10 of those labelled 0 look like class 1.
  labels = np.repeat([0, 1], 40)
  probs = np.where(labels[:, None] == np.arange(2), 0.9, 0.1)
  probs[:10] = [0.05, 0.95]
  wrong = class_budgets.estimated_wrong_per_class(labels, probs)
  assert wrong[0] == pytest.approx(10, abs=1) and wrong[1] == pytest.approx(0, abs=1e-9)
  # One label only: no estimate to split by.
  np.testing.assert_array_equal(
      class_budgets.estimated_wrong_per_class(np.zeros(5, np.int64), np.full((5, 2), 0.5)), 0)


def _lopsided():
  """Class 1's scores are all higher, but the noise sits in class 0 (its first 12 rows)."""
  labels = np.repeat([0, 1], 20)
  probs = np.where(labels[:, None] == np.arange(2), 0.9, 0.1)
  probs[:12] = [0.02, 0.98]
  scores = np.where(labels == 1, 10.0 + np.arange(40), np.arange(40, 0, -1.0))
  return scores, labels, probs


def test_the_budget_follows_the_estimated_noise_not_the_score_scale():
  scores, labels, probs = _lopsided()
  plain = class_budgets.select_suspects_by_class(scores, labels, probs, 6, by_class=False)
  np.testing.assert_array_equal(plain, actions.select_suspects(scores, 6))
  assert set(labels[plain]) == {1}
  got = class_budgets.select_suspects_by_class(scores, labels, probs, 6)
  # All of the round goes to class 0, its best-scored rows first.
  np.testing.assert_array_equal(got, [0, 1, 2, 3, 4, 5])


def test_excluded_rows_are_skipped_and_short_classes_leave_the_rest_to_the_global_ranking():
  scores, labels, probs = _lopsided()
  exclude = np.zeros(40, bool)
  exclude[[0, 2]] = True
  got = class_budgets.select_suspects_by_class(scores, labels, probs, 4, exclude=exclude)
  np.testing.assert_array_equal(got, [1, 3, 4, 5])
  scores[3:20] = -np.inf
  got = class_budgets.select_suspects_by_class(scores, labels, probs, 4, exclude=exclude)
  # Class 0 has row 1 left; the global ranking adds class 1's best three; best first.
  np.testing.assert_array_equal(got, [39, 38, 37, 1])


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_the_switch_must_be_a_bool(bad):
  with pytest.raises(UserError, match="per_class_budgets.enabled"):
    class_budgets.per_class_budgets(enabled=bad)
