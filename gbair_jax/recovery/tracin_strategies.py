"""G-BAIR's TracIn strategies: `tracin_opponents` and `self_influence`.

Queries are validation examples scored at their correct (never corrupted) label:
`queries="misclassified"` takes only those the model gets wrong (the paper's G-BAIR),
`queries="validation"` (default) takes all of them. A training example whose TracIn score on
a query is negative pushed the model away from the right answer (an opponent).
Aggregations over queries:
  net_opposition (default) minus the net influence summed over the queries, divided by the
                example's own gradient norm (direction, not size), times its residual
                1 - p(label) at the final prompt (label-aware: an example that pushes the
                model away from the clean validation labels and that the model finds
                implausible at its own label is the likelier mislabel);
  count         number of queries whose top-k opponents hold the example (ties broken by
                summed negative influence);
  sum_negative  minus the summed negative influence over all queries;
  count_loss    count, ties broken by the example's training loss;
  opposition_loss rank of summed negative influence + rank of training loss.
Why all validation queries by default: the misclassified ones mostly belong to the class the
model currently under-predicts, so their opponents are only one kind of flipped label; the
correctly classified majority is what the other kind opposes (docs/BENCHMARKS.md has the
measurements). `normalize=True` uses cosine instead of raw dot products (cosine TracIn).

With `tracin.source = "in_run"` (train/in_run.py) the training run accumulates what
`net_opposition` on all validation queries and `self_influence` need (and the margins
`aum` reads), and they score from it without a pass of their own; other settings score
from the checkpoints as before.
"""
from __future__ import annotations

import gin
import numpy as np

from gbair_jax.errors import UserError
from gbair_jax.influence import tracin
from gbair_jax.influence.projection import RandomProjection
from gbair_jax.recovery.context import RoundContext
from gbair_jax.recovery.registry import register
from gbair_jax.recovery.strategies import current_label_losses
from gbair_jax.train import batches as batches_lib
from gbair_jax.train import in_run as in_run_lib

AGGREGATIONS = ("net_opposition", "count", "sum_negative", "count_loss", "opposition_loss")
QUERY_SETS = ("validation", "misclassified")


def _in_train_order(ctx: RoundContext, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
  position = {int(i): n for n, i in enumerate(ids)}
  return np.array([values[position[int(i)]] for i in ctx.train["example_id"]], np.float64)


def _batches(ctx: RoundContext, arrays: dict[str, np.ndarray]):
  """Scores are keyed by example id, so batches run shortest texts first with trimmed
  padding. They are global batches: every process iterates the same ones, and the mesh
  (ctx.mesh) splits each over its `data` axis."""
  return batches_lib.iterate_batches(arrays, ctx.batch_size, batches_lib.length_order(arrays),
                                     trim_multiple=batches_lib.TRIM_MULTIPLE)


def in_run_hook(strategy: str, spec, validation: dict[str, np.ndarray]
                ) -> in_run_lib.InRunTracIn | None:
  """The trainer hook whose accumulators `strategy` scores from, or None (it scores from
  the checkpoints, or needs no TracIn) when `tracin.source` is not "in_run"."""
  settings = in_run_lib.tracin_settings()
  if settings["source"] != "in_run":
    return None
  if strategy == "tracin_opponents":
    return in_run_lib.InRunTracIn(
        spec, queries=validation, top_k=settings["top_k"],
        first_query_epoch=settings["first_query_epoch"],
        query_every_steps=settings["query_every_steps"])
  if strategy in ("self_influence", "aum"):  # AUM: the margins each step recorded
    return in_run_lib.InRunTracIn(spec)  # no queries: self-influence and dynamics only
  return None


def _ranks(values: np.ndarray) -> np.ndarray:
  """0 for the smallest value, N - 1 for the largest (stable on ties)."""
  return np.argsort(np.argsort(values, kind="stable"), kind="stable").astype(np.float64)


def _tiebreak(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
  """Orders by `primary`, then `secondary`, as one float (secondary squashed into [0, 1))."""
  return primary + _ranks(secondary) / (len(secondary) + 1.0)


def net_opposition(mean_influence: np.ndarray, self_influence: np.ndarray | None,
                   losses: np.ndarray) -> np.ndarray:
  """-(mean TracIn over queries) / |gradient| x (1 - p(label)): see the module docstring.

  Dividing by sqrt(self-influence) (= the lr-weighted gradient norm over checkpoints) keeps
  how strongly the example's gradient points against the queries, not how large it is;
  the residual puts back the one size that matters, how implausible its label is.
  """
  opposition = -mean_influence
  if self_influence is not None:
    opposition = opposition / np.sqrt(np.maximum(self_influence, 1e-30))
  return opposition * (1.0 - np.exp(-losses))


@register("tracin_opponents")
@gin.configurable(denylist=["ctx"])
def tracin_opponents(ctx: RoundContext, aggregation: str = "net_opposition",
                     queries: str = "validation", top_k: int = 50, normalize: bool = False,
                     projection_dim: int | None = None, projection_seed: int = 0) -> np.ndarray:
  """G-BAIR: training examples that oppose the correct labels of validation queries."""
  if aggregation not in AGGREGATIONS:
    raise UserError(f"tracin_opponents.aggregation='{aggregation}' is unknown "
                    f"(expected one of {', '.join(AGGREGATIONS)})")
  if queries not in QUERY_SETS:
    raise UserError(f"tracin_opponents.queries='{queries}' is unknown "
                    f"(expected one of {', '.join(QUERY_SETS)})")
  misclassified = ctx.misclassified
  query_set = misclassified if queries == "misclassified" else ctx.validation
  num = len(ctx.train["label"])
  if len(misclassified["label"]) == 0:
    return np.full(num, -np.inf)  # nothing misclassified: nothing to recover from
  in_run = ctx.in_run
  if in_run is not None and in_run.mean_influence is not None:
    if (aggregation == "net_opposition" and queries == "validation" and not normalize
        and not projection_dim
        and np.array_equal(in_run.query_ids, ctx.validation["example_id"])):
      return net_opposition(in_run.mean_influence, in_run.self_influence,
                            current_label_losses(ctx))
    if ctx.progress:
      print(f"tracin_opponents: aggregation={aggregation}, queries={queries}, "
            f"normalize={normalize}, projection_dim={projection_dim} cannot use in-run "
            "accumulators; scoring from the checkpoints", flush=True)
  projection = (RandomProjection(dim=projection_dim, seed=projection_seed)
                if projection_dim else None)
  options = tracin.GradientOptions(normalize=normalize, projection=projection)
  result = tracin.tracin_scores(
      ctx.spec.example_losses, ctx.checkpoints, ctx.frozen,
      _batches(ctx, ctx.train), _batches(ctx, query_set), options=options,
      top_k=min(top_k, num), mesh=ctx.mesh, progress=ctx.progress)
  negative = _in_train_order(ctx, result.example_ids, result.negative_influence)
  if aggregation == "net_opposition":
    self_influence = (None if normalize else  # cosine scores are already per unit gradient
                      _in_train_order(ctx, result.example_ids, result.self_influence))
    return net_opposition(_in_train_order(ctx, result.example_ids, result.mean_influence),
                          self_influence, current_label_losses(ctx))
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
  if ctx.in_run is not None:
    return ctx.in_run.self_influence.astype(np.float64)
  ids, scores = tracin.self_influence(ctx.spec.example_losses, ctx.checkpoints, ctx.frozen,
                                      _batches(ctx, ctx.train), mesh=ctx.mesh,
                                      progress=ctx.progress)
  return _in_train_order(ctx, ids, scores)
