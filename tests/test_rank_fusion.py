"""rank_fusion (recovery/rank_fusion.py): the members' percentile ranks averaged, checked
against the definition, through gin, and refusing what cannot fuse."""
import gin
import numpy as np
import pytest

from gbair_jax.errors import UserError
from gbair_jax.recovery import embedding_vote, rank_fusion, registry, strategies
from gbair_jax.recovery.registry import get_strategy


def _rank_by_definition(scores, i):
  """(number below + mean place among the equal ones) / N, one entry at a time."""
  below = sum(s < scores[i] for s in scores)
  equal = sum(s == scores[i] for s in scores)
  return (below + (equal + 1) / 2) / len(scores)


def test_percentile_ranks_match_their_definition_with_ties_and_non_suspects():
  scores = np.array([0.3, -np.inf, 2.0, 0.3, -np.inf, -1.0, 0.3])
  expected = [_rank_by_definition(scores, i) for i in range(len(scores))]
  np.testing.assert_allclose(rank_fusion.percentile_ranks(scores), expected)
  assert rank_fusion.percentile_ranks(scores)[2] == 1.0  # the top suspect


def test_percentile_ranks_refuse_nan():
  with pytest.raises(ValueError, match="NaN"):
    rank_fusion.percentile_ranks(np.array([1.0, np.nan]))


def test_fuse_is_the_weighted_mean_of_ranks_and_weights_move_the_top():
  rng = np.random.default_rng(0)
  first, second = rng.normal(size=50), rng.normal(size=50)
  fused = rank_fusion.fuse([first, second], [3.0, 1.0])
  expected = [(3 * _rank_by_definition(first, i) + _rank_by_definition(second, i)) / 4
              for i in range(50)]
  np.testing.assert_allclose(fused, expected)
  # A member alone, or with all the weight, orders the examples as it does.
  heavy = rank_fusion.fuse([first, second], [1e6, 1.0])
  np.testing.assert_array_equal(np.argsort(-heavy)[:10], np.argsort(-first)[:10])


def test_the_default_fuses_the_embedding_vote_with_loss(strategy_context):
  got = get_strategy("rank_fusion")(strategy_context)
  vote = embedding_vote.embedding_vote_scores(strategy_context)
  loss = strategies.current_label_losses(strategy_context)
  expected = [(_rank_by_definition(vote, i) + _rank_by_definition(loss, i)) / 2
              for i in range(len(vote))]
  np.testing.assert_allclose(got, expected)


def test_members_weights_and_the_members_own_bindings_come_from_gin(strategy_context):
  gin.clear_config()
  try:
    gin.parse_config("rank_fusion_strategy.members = ('class_vote_embedding', 'random')\n"
                     "rank_fusion_strategy.weights = (1, 2)\n"
                     "class_vote_embedding_strategy.neighbours = 3\n")
    got = get_strategy("rank_fusion")(strategy_context)
  finally:
    gin.clear_config()
  vote = embedding_vote.embedding_vote_scores(strategy_context, neighbours=3)
  noise = strategies.random_strategy(strategy_context)
  np.testing.assert_allclose(got, rank_fusion.fuse([vote, noise], [1, 2]))


@pytest.mark.parametrize("members,weights,message", [
    (("loss",), None, "at least two"),
    ("loss", None, "at least two"),
    (("loss", "rank_fusion"), None, "cannot fuse itself"),
    (("loss", "no_such_strategy"), None, "no_such_strategy"),
    (("loss", "random"), (1.0,), "one positive weight per member"),
    (("loss", "random"), (1.0, 0.0), "one positive weight per member"),
    (("loss", "random"), (1.0, True), "one positive weight per member"),
])
def test_settings_that_cannot_fuse_are_refused_before_any_member_runs(
    strategy_context, members, weights, message, monkeypatch):
  calls = []
  for name in ("loss", "random"):
    monkeypatch.setitem(registry.STRATEGIES, name, lambda ctx, name=name: calls.append(name))
  with pytest.raises(UserError, match=message):
    rank_fusion.rank_fusion_strategy(strategy_context, members=members, weights=weights)
  assert calls == []  # no member ran (each may take minutes on a real run)
