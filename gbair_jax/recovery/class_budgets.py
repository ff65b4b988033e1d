"""Per-class budgets: a round's changes split over the labels in proportion to the noise
estimated in each (issue 12, item 5), instead of one ranking over the whole training set.

Why: noise is rarely spread like the labels. 30% uniform flips on insults (about a quarter
insults) leave over half of the examples labelled "insult" wrong and about one in eight of
those labelled "not insult"; class-conditional noise is lopsided by construction. One global
top-k takes whatever the score's scale favours, which can differ between the classes. Here
each given label k gets budget * n_k / sum(n) of the round (largest remainders), where n_k
is the confident joint's estimate of the wrong labels among those labelled k (cleanlab,
Northcutt et al. 2021, calibrated), and within k the strategy's own ranking chooses. A
class with fewer candidates than its share, or a round with no noise estimated anywhere,
leaves the rest to the global ranking, so a round never changes fewer than the plain one.

The probabilities are the round model's own (in-sample) on the training set: they saw these
labels, which makes the estimate of the amount conservative; only its split between the
classes is used here, not its size.

Off by default; `per_class_budgets.enabled = True` turns it on for any strategy.
"""
from __future__ import annotations

import gin
import numpy as np

from gbair_jax.errors import UserError
from gbair_jax.recovery import actions


@gin.configurable
def per_class_budgets(enabled: bool = False) -> bool:
  """The gin switch, read (and checked) once before a run does any work."""
  if not isinstance(enabled, bool):
    raise UserError(f"per_class_budgets.enabled = {enabled!r}: must be True or False")
  return enabled


def estimated_wrong_per_class(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
  """[C] estimated wrong labels among the examples labelled k: the off-diagonal of row k
  of cleanlab's calibrated confident joint (rows: given label, columns: likely true one)."""
  from cleanlab.count import compute_confident_joint  # heavy import, only when used
  num_classes = probs.shape[1]
  present = np.bincount(labels, minlength=num_classes) > 0
  if present.sum() < 2:  # one label only: nothing to tell the classes apart by
    return np.zeros(num_classes)
  joint = np.asarray(compute_confident_joint(labels, probs, calibrate=True), np.float64)
  return joint.sum(axis=1) - np.diag(joint)


def split_budget(weights: np.ndarray, count: int) -> np.ndarray:
  """[C] integers summing to `count`, proportional to `weights` (largest remainders, ties
  to the lower class index); all zero when no weight is positive."""
  weights = np.clip(np.asarray(weights, np.float64), 0, None)
  if weights.sum() <= 0:
    return np.zeros(len(weights), np.int64)
  exact = count * weights / weights.sum()
  budgets = np.floor(exact).astype(np.int64)
  order = np.argsort(-(exact - budgets), kind="stable")
  budgets[order[:count - budgets.sum()]] += 1
  return budgets


def select_suspects_by_class(scores: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                             count: int, exclude: np.ndarray | None = None,
                             by_class: bool = True) -> np.ndarray:
  """The round's `count` suspects: each class's share by the strategy's ranking within
  the class, then the global ranking for what the shares left; returned best first, as
  actions.select_suspects orders them (relabel_or_remove relabels the best-ranked share).
  With `by_class = False`: actions.select_suspects, one global ranking."""
  if not by_class:
    return actions.select_suspects(scores, count, exclude=exclude)
  labels = np.asarray(labels)
  budgets = split_budget(estimated_wrong_per_class(labels, probs), count)
  scores = np.asarray(scores, np.float64)
  chosen = []
  for k, budget in enumerate(budgets):
    if budget:
      outside = labels != k if exclude is None else (labels != k) | exclude
      chosen.append(actions.select_suspects(scores, int(budget), exclude=outside))
  chosen = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
  taken = np.zeros(len(scores), bool)
  taken[chosen] = True
  rest = actions.select_suspects(scores, count - len(chosen),
                                 exclude=taken if exclude is None else taken | exclude)
  taken[rest] = True
  return actions.select_suspects(scores, int(taken.sum()), exclude=~taken)
