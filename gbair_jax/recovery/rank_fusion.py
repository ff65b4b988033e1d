"""`rank_fusion`: several strategies' rankings, averaged (issue 12, item 4: fuse signals
whose errors differ).

The class vote on frozen embeddings (`class_vote_embedding`) asks whether an example sits
among the other class's clean voters; it separates flipped labels best, but says nothing
about how hard the model is pulled by each. `loss` ranks by exactly that pull, and its
errors are the hard, correctly labelled examples the vote puts low. Fusing them asks for
both: near the other class, and fought by the model.

Each member's scores become mean percentile ranks in (0, 1] (ties share their mean rank;
a member's -inf, "not a suspect", ranks lowest but vetoes nothing), and the score is their
weighted mean. Ranks, not raw scores: the members' scales differ (cosine differences,
nats, counts). Each member runs with its own gin bindings, as it would alone.

Measured on Rotten Tomatoes development seeds 3-4 (docs/BENCHMARKS.md): the fusion picked
the most precise changes of the three, but its final test AUC was level with both members'.
"""
from __future__ import annotations

from typing import Sequence

import gin
import numpy as np

from gbair_jax.errors import UserError
from gbair_jax.recovery.context import RoundContext
from gbair_jax.recovery.registry import get_strategy, register

_BINDING = "rank_fusion_strategy"


def percentile_ranks(scores: np.ndarray) -> np.ndarray:
  """Mean rank / N per entry: 1 for the highest score, ties sharing their mean rank."""
  scores = np.asarray(scores, np.float64)
  if np.isnan(scores).any():
    raise ValueError("scores hold NaN: a strategy must give -inf, not NaN, for non-suspects")
  order = np.argsort(scores, kind="stable")
  # Equal scores form one run in sorted order; each gets its run's mean 1-based rank.
  _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
  ranks = np.empty(len(scores))
  ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
  return ranks / len(scores)


def fuse(member_scores: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
  """The weights' mean of the members' percentile ranks (weights need not sum to 1)."""
  weights = np.asarray(weights, np.float64)
  stacked = np.stack([percentile_ranks(s) for s in member_scores])
  return weights @ stacked / weights.sum()


def _checked(members: Sequence[str], weights: Sequence[float] | None) -> list[float]:
  """The weights to use (equal by default); refuses settings that cannot fuse."""
  if isinstance(members, str) or len(members) < 2:
    raise UserError(f"{_BINDING}.members = {members!r}: name at least two strategies "
                    f"(a tuple of names)")
  if "rank_fusion" in members:
    raise UserError(f"{_BINDING}.members = {tuple(members)!r}: cannot fuse itself")
  for name in members:
    get_strategy(name)  # an unknown name fails here, before any member runs
  if weights is None:
    return [1.0] * len(members)
  if len(weights) != len(members) or any(
      isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0 for w in weights):
    raise UserError(f"{_BINDING}.weights = {tuple(weights)!r}: needs one positive weight per "
                    f"member ({len(members)}: {', '.join(members)})")
  return [float(w) for w in weights]


@register("rank_fusion")
@gin.configurable(denylist=["ctx"])
def rank_fusion_strategy(ctx: RoundContext,
                         members: Sequence[str] = ("class_vote_embedding", "loss"),
                         weights: Sequence[float] | None = None) -> np.ndarray:
  """The weighted mean of the members' percentile ranks (see the module docstring)."""
  weights = _checked(members, weights)
  return fuse([get_strategy(name)(ctx) for name in members], weights)
