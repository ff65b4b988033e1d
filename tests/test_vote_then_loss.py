"""vote_then_loss (recovery/vote_then_loss.py): the vote's scores in the first rounds, the
training loss after; through gin, and refusing what cannot run. The loop's round index
reaching it is checked in test_recovery.py."""
import dataclasses

import gin
import numpy as np
import pytest

from gbair_jax.errors import UserError
from gbair_jax.recovery import embedding_vote, registry, strategies, vote_then_loss
from gbair_jax.recovery.registry import get_strategy


def test_round_zero_votes_and_later_rounds_rank_by_loss(strategy_context):
  vote = embedding_vote.embedding_vote_scores(strategy_context)
  loss = strategies.current_label_losses(strategy_context)
  assert not np.array_equal(np.argsort(vote), np.argsort(loss))  # the two rankings differ
  first = get_strategy("vote_then_loss")(strategy_context)
  later = get_strategy("vote_then_loss")(dataclasses.replace(strategy_context, round_index=1))
  np.testing.assert_allclose(first, vote)
  np.testing.assert_allclose(later, loss)


def test_the_vote_and_its_rounds_come_from_gin(strategy_context):
  gin.clear_config()
  try:
    gin.parse_config("vote_then_loss_strategy.vote = 'random'\n"
                     "vote_then_loss_strategy.vote_rounds = 2\n")
    per_round = [get_strategy("vote_then_loss")(dataclasses.replace(strategy_context, round_index=r))
                 for r in range(3)]
  finally:
    gin.clear_config()
  noise = strategies.random_strategy(strategy_context)
  np.testing.assert_array_equal(per_round[0], noise)
  np.testing.assert_array_equal(per_round[1], noise)
  np.testing.assert_allclose(per_round[2], strategies.current_label_losses(strategy_context))


def test_no_vote_rounds_is_plain_loss(strategy_context):
  got = vote_then_loss.vote_then_loss_strategy(strategy_context, vote_rounds=0)
  np.testing.assert_allclose(got, strategies.current_label_losses(strategy_context))


@pytest.mark.parametrize("vote,vote_rounds,message", [
    ("vote_then_loss", 1, "names vote_then_loss itself"),
    ("no_such_strategy", 1, "vote_then_loss_strategy.vote: recovery strategy 'no_such"),
    ("random", -1, "vote_rounds = -1: must be an integer >= 0"),
    ("random", 1.5, "vote_rounds = 1.5"),
    ("random", True, "vote_rounds = True"),
])
def test_settings_that_cannot_run_are_refused_before_the_vote_runs(
    strategy_context, vote, vote_rounds, message, monkeypatch):
  calls = []
  monkeypatch.setitem(registry.STRATEGIES, "random", lambda ctx: calls.append("random"))
  with pytest.raises(UserError, match=message):
    vote_then_loss.vote_then_loss_strategy(strategy_context, vote=vote, vote_rounds=vote_rounds)
  assert calls == []
