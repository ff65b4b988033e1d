"""Selecting suspects from scores, and acting on them: relabel or remove.

Actions become ledger entries; the source data is never touched. Binary tasks flip the
label; with C > 2 classes an example is relabeled to the model's most likely other class.
"""
from __future__ import annotations

import gin
import numpy as np

from gbair_jax.data.ledger import LedgerEntry
from gbair_jax.errors import UserError

ACTIONS = ("relabel", "remove")
# Ranking resolution, relative to the largest |score|. The same run on another mesh (1
# device, 8, several hosts) adds in another order and moves scores in their last bits
# (about 1e-6 relative); ranking on scores rounded to this step puts near-ties in training-
# set order on every mesh alike, so ledgers do not depend on the hardware.
RANK_RESOLUTION = 1e-4


def select_suspects(scores: np.ndarray, count: int, exclude: np.ndarray | None = None) -> np.ndarray:
  """Indices of the `count` highest finite scores, best first; `exclude` (bool [N]) marks
  examples already changed in an earlier round, which are never selected again. Scores
  within RANK_RESOLUTION of the largest count as tied (training-set order decides)."""
  scores = np.asarray(scores, np.float64).copy()
  if exclude is not None:
    scores[exclude] = -np.inf
  candidates = np.flatnonzero(np.isfinite(scores))
  key = scores[candidates]
  scale = float(np.max(np.abs(key))) if len(key) else 0.0
  if scale > 0:
    key = np.round(key / (scale * RANK_RESOLUTION))
  # Stable sort on -score: ties keep training-set order, so selection is deterministic.
  ranked = candidates[np.argsort(-key, kind="stable")]
  return ranked[:count]


@gin.configurable
def selection_size(num_train: int, select_count: int | None = None,
                   select_fraction: float | None = 0.05) -> int:
  """How many to change per round: `select_count` if set, else `select_fraction` of N."""
  if select_count is not None:
    if not 0 < select_count <= num_train:
      raise UserError(f"selection_size.select_count={select_count} must be in [1, {num_train}] "
                      "(the training set size)")
    return int(select_count)
  if select_fraction is None or not 0 < select_fraction <= 1:
    raise UserError(f"selection_size.select_fraction={select_fraction} must be in (0, 1]")
  return max(1, int(round(select_fraction * num_train)))


def act(action: str, selected: np.ndarray, train: dict[str, np.ndarray], train_logits: np.ndarray,
        scores: np.ndarray, round_index: int, strategy: str) -> list[LedgerEntry]:
  """Ledger entries for the selected training rows."""
  if action not in ACTIONS:
    raise UserError(f"recovery action '{action}' is unknown (expected relabel or remove)")
  entries = []
  for i in selected:
    old = int(train["label"][i])
    if action == "remove":
      new = None
    elif train_logits.shape[1] == 2:
      new = 1 - old
    else:
      ranked = np.argsort(-train_logits[i], kind="stable")
      new = int(next(c for c in ranked if c != old))
    entries.append(LedgerEntry(round=round_index, example_id=int(train["example_id"][i]),
                               old_label=old, new_label=new, score=float(scores[i]),
                               strategy=strategy))
  return entries
