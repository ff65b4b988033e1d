"""The baseline selection strategies (loss, oracle, random, confident learning), registered
in registry.py. G-BAIR's own, `tracin_opponents`, lives in tracin_strategies.py.
"""
from __future__ import annotations

import gin
import numpy as np

from gbair_jax.errors import UserError
from gbair_jax.recovery.context import RoundContext
from gbair_jax.recovery.registry import register
from gbair_jax.train.metrics import softmax


def current_label_losses(ctx: RoundContext) -> np.ndarray:
  log_probs = np.log(np.clip(softmax(ctx.train_logits), 1e-12, None))
  return -log_probs[np.arange(len(ctx.train["label"])), ctx.train["label"]]


@register("loss")
def loss_strategy(ctx: RoundContext) -> np.ndarray:
  """Highest training loss at the final checkpoint: the strong published baseline."""
  return current_label_losses(ctx)


@register("oracle")
def oracle_strategy(ctx: RoundContext) -> np.ndarray:
  """The upper bound: every training label that is wrong now (it differs from the clean
  label kept in `original_label`), most implausible first; right labels are no suspects.
  Uses the ground truth: a reference, never a method."""
  wrong = ctx.train["label"] != ctx.train["original_label"]
  return np.where(wrong, current_label_losses(ctx), -np.inf)


@register("random")
def random_strategy(ctx: RoundContext) -> np.ndarray:
  """Uniform random order, seeded: the floor any strategy must beat."""
  return np.random.default_rng([ctx.seed, 7]).random(len(ctx.train["label"]))


@register("confident_learning")
@gin.configurable(denylist=["ctx"])
def confident_learning_strategy(ctx: RoundContext, filter_by: str = "prune_by_noise_rate",
                                num_folds: int = 5) -> np.ndarray:
  """cleanlab's `find_label_issues` on out-of-fold predicted probabilities.

  Only flagged examples are suspects, ranked by self-confidence. `num_folds` = K >= 2
  trains K prompts, each without one stratified fold (recovery/out_of_fold.py), as
  cleanlab asks; `num_folds = 1` uses the round's own model (in-sample: it saw these
  labels, which makes cleanlab conservative, and costs no training).
  """
  from cleanlab.filter import find_label_issues  # heavy import, only when used
  if num_folds == 1:
    probs = softmax(ctx.train_logits)
  else:
    from gbair_jax.recovery import out_of_fold  # pylint: disable=g-import-not-at-top
    probs = out_of_fold.out_of_fold_probabilities(
        ctx, num_folds, "confident_learning_strategy.num_folds")
  # n_jobs=1: cleanlab forks worker processes otherwise, which can deadlock under JAX.
  ranked = find_label_issues(ctx.train["label"], probs, filter_by=filter_by, n_jobs=1,
                             return_indices_ranked_by="self_confidence")
  scores = np.full(len(probs), -np.inf)
  scores[ranked] = np.arange(len(ranked), 0, -1, dtype=np.float64)
  return scores
