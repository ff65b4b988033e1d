"""vote_gated_loss (recovery/vote_gated_loss.py): the loss ranks, the vote gates; checked
against the members run apart, through gin, and refusing what cannot gate."""
import gin
import numpy as np
import pytest

from gbair_jax.errors import UserError
from gbair_jax.recovery import embedding_vote, registry, strategies, vote_gated_loss
from gbair_jax.recovery.registry import get_strategy


def test_gated_keeps_the_loss_only_where_the_vote_passes():
  got = vote_gated_loss.gated(np.array([0.2, -0.1, 0.0, 1.5]), np.array([3.0, 9.0, 7.0, 0.5]), 0.0)
  np.testing.assert_array_equal(got, [3.0, -np.inf, -np.inf, 0.5])
  # The gate, not the loss, decides who is a suspect: the highest loss (9.0) is not one.
  assert np.argmax(got) == 0


def test_the_default_gates_the_loss_by_the_embedding_vote(strategy_context):
  got = get_strategy("vote_gated_loss")(strategy_context)
  vote = embedding_vote.embedding_vote_scores(strategy_context)
  loss = strategies.current_label_losses(strategy_context)
  assert 0 < np.sum(vote > 0) < len(vote)  # the tiny data exercise both sides of the gate
  np.testing.assert_array_equal(np.isfinite(got), vote > 0)
  np.testing.assert_allclose(got[vote > 0], loss[vote > 0])


def test_the_vote_its_bindings_and_the_threshold_come_from_gin(strategy_context):
  gin.clear_config()
  try:
    gin.parse_config("vote_gated_loss_strategy.min_vote = 0.5\n"
                     "vote_gated_loss_strategy.vote = 'random'\n")
    got = get_strategy("vote_gated_loss")(strategy_context)
  finally:
    gin.clear_config()
  noise = strategies.random_strategy(strategy_context)
  np.testing.assert_array_equal(np.isfinite(got), noise > 0.5)


@pytest.mark.parametrize("vote,min_vote,message", [
    ("vote_gated_loss", 0.0, "names vote_gated_loss itself"),
    ("no_such_strategy", 0.0, "vote_gated_loss_strategy.vote: recovery strategy 'no_such"),
    ("random", float("nan"), "min_vote = nan: must be a finite number"),
    ("random", True, "min_vote = True"),
])
def test_settings_that_cannot_gate_are_refused_before_the_vote_runs(
    strategy_context, vote, min_vote, message, monkeypatch):
  calls = []
  monkeypatch.setitem(registry.STRATEGIES, "random", lambda ctx: calls.append("random"))
  with pytest.raises(UserError, match=message):
    vote_gated_loss.vote_gated_loss_strategy(strategy_context, vote=vote, min_vote=min_vote)
  assert calls == []
