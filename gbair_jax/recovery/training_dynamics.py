"""Training-dynamics strategies: AUM, the area under the margin (Pleiss et al. 2020).

An example's margin at an epoch is the logit of its assigned label minus the largest other
logit; AUM averages it over training. Correctly labelled examples are learnt early and
their margin grows; a flipped label fights the rest of its class and keeps a low or
negative margin, even after the model memorises it at the end (which is what hides it
from the final-checkpoint `loss`). Score = -AUM.
"""
from __future__ import annotations

import numpy as np

from gbair_jax.recovery.context import RoundContext
from gbair_jax.recovery.registry import register
from gbair_jax.train.trainer import predict_logits


def margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """logit(label) - max other logit, per row of logits [N, C]."""
  rows = np.arange(len(labels))
  assigned = logits[rows, labels]
  others = logits.copy()
  others[rows, labels] = -np.inf
  return assigned - others.max(axis=1)


def epoch_margins(ctx: RoundContext) -> np.ndarray:
  """[E, N] margins of the training examples at their current labels, one row per epoch.

  With `tracin.source = "in_run"` the trainer recorded each example's margin as its batch
  was trained on (`ctx.dynamics`, AUM's own definition); otherwise they are computed here
  from the epoch-end checkpoints (one forward pass over the training set per epoch).
  """
  if ctx.dynamics is not None:
    return np.asarray(ctx.dynamics.margin, np.float64)
  labels = ctx.train["label"]
  return np.stack([margins(predict_logits(ctx.spec, prompt, ctx.frozen, ctx.train,
                                          mesh=ctx.mesh), labels)
                   for prompt, _ in ctx.checkpoints])


def area_under_margin(epoch_margins_: np.ndarray) -> np.ndarray:
  """Mean margin over epochs [N]."""
  return np.asarray(epoch_margins_, np.float64).mean(axis=0)


@register("aum")
def aum_strategy(ctx: RoundContext) -> np.ndarray:
  """Lowest area under the margin first (Pleiss et al. 2020): -mean margin over epochs."""
  return -area_under_margin(epoch_margins(ctx))
