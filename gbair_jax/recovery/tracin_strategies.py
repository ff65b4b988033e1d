"""G-BAIR's TracIn strategies: `tracin_opponents` and `self_influence`.

Queries are the validation examples the model gets wrong, scored at their correct label;
a training example whose TracIn score on such a query is negative pushed the model away
from the right answer (an opponent). Aggregations over queries:
  count         number of queries whose top-k opponents hold the example (ties broken by
                summed negative influence);
  sum_negative  minus the summed negative influence over all queries;
  count_loss    count, ties broken by the example's training loss (label-aware: an
                opponent the model also finds implausible is the likelier mislabel).
  opposition_loss (default) rank of summed negative influence + rank of training loss:
                an example that both opposes the misclassified queries and is implausible
                at its own label. The best variant we measured (docs/BENCHMARKS.md).
`normalize=True` uses cosine instead of raw dot products (cosine TracIn).
"""
from __future__ import annotations

import gin
import numpy as np

from gbair_jax.errors import UserError
from gbair_jax.influence import tracin
from gbair_jax.influence.projection import RandomProjection
from gbair_jax.recovery.context import RoundContext
from gbair_jax.recovery.strategies import current_label_losses, register
from gbair_jax.train import batches as batches_lib

AGGREGATIONS = ("opposition_loss", "count", "sum_negative", "count_loss")


def _in_train_order(ctx: RoundContext, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
  position = {int(i): n for n, i in enumerate(ids)}
  return np.array([values[position[int(i)]] for i in ctx.train["example_id"]], np.float64)


def _train_batches(ctx: RoundContext):
  return batches_lib.iterate_batches(ctx.train, ctx.batch_size)


def _ranks(values: np.ndarray) -> np.ndarray:
  """0 for the smallest value, N - 1 for the largest (stable on ties)."""
  return np.argsort(np.argsort(values, kind="stable"), kind="stable").astype(np.float64)


def _tiebreak(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
  """Orders by `primary`, then `secondary`, as one float (secondary squashed into [0, 1))."""
  return primary + _ranks(secondary) / (len(secondary) + 1.0)


@register("tracin_opponents")
@gin.configurable(denylist=["ctx"])
def tracin_opponents(ctx: RoundContext, aggregation: str = "opposition_loss", top_k: int = 50,
                     normalize: bool = False, projection_dim: int | None = None,
                     projection_seed: int = 0) -> np.ndarray:
  """G-BAIR: training examples that oppose the correct label of misclassified queries."""
  if aggregation not in AGGREGATIONS:
    raise UserError(f"tracin_opponents.aggregation='{aggregation}' is unknown "
                    f"(expected one of {', '.join(AGGREGATIONS)})")
  queries = ctx.misclassified
  num = len(ctx.train["label"])
  if len(queries["label"]) == 0:
    return np.full(num, -np.inf)  # nothing misclassified: nothing to recover from
  projection = (RandomProjection(dim=projection_dim, seed=projection_seed)
                if projection_dim else None)
  options = tracin.GradientOptions(normalize=normalize, projection=projection)
  result = tracin.tracin_scores(
      ctx.spec.example_losses, ctx.checkpoints, ctx.frozen, _train_batches(ctx),
      batches_lib.iterate_batches(queries, ctx.batch_size), options=options,
      top_k=min(top_k, num), progress=ctx.progress)
  negative = _in_train_order(ctx, result.example_ids, result.negative_influence)
  if aggregation == "sum_negative":
    return -negative
  if aggregation == "opposition_loss":
    loss = current_label_losses(ctx)
    return _tiebreak(_ranks(-negative) + _ranks(loss), loss)
  count = _in_train_order(ctx, result.example_ids, result.opponent_count)
  secondary = -negative if aggregation == "count" else current_label_losses(ctx)
  scores = _tiebreak(count, secondary)
  # An example in nobody's opponent list is no suspect of this strategy.
  return np.where(count > 0, scores, -np.inf)


@register("self_influence")
def self_influence_strategy(ctx: RoundContext) -> np.ndarray:
  """TracIn(z, z): examples that most reduce their own loss when trained on (memorised)."""
  ids, scores = tracin.self_influence(ctx.spec.example_losses, ctx.checkpoints, ctx.frozen,
                                      _train_batches(ctx), progress=ctx.progress)
  return _in_train_order(ctx, ids, scores)
