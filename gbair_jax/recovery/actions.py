"""Selecting suspects from scores, and acting on them: relabel, remove, or both in tiers.

Actions become ledger entries; the source data is never touched. Binary tasks flip the
label; with C > 2 classes an example is relabeled to the model's most likely other class.

`relabel_or_remove` relabels the best-ranked part of a round's selection and removes the
rest (gin `relabel_tier.relabel_share`). A relabel with precision p fixes (2p - 1) labels
per change net, so where a ranking is unsure (its lower ranks, p near or below 0.5) it adds
noise; a removal there still takes p wrong labels out and costs only (1 - p) clean examples.
"""
from __future__ import annotations

import gin
import numpy as np

from gbair_jax.data.ledger import LedgerEntry
from gbair_jax.errors import UserError

ACTIONS = ("relabel", "remove", "relabel_or_remove")
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


@gin.configurable
def relabel_tier(selected_count: int, relabel_share: float = 0.5) -> int:
  """How many of a round's `selected_count` suspects, best first, `relabel_or_remove`
  relabels (the rest it removes): `relabel_share` of them, rounded up."""
  if isinstance(relabel_share, bool) or not isinstance(relabel_share, (int, float)) or not (
      0 <= relabel_share <= 1):
    raise UserError(f"relabel_tier.relabel_share = {relabel_share!r}: must be a number in [0, 1]")
  return int(np.ceil(relabel_share * selected_count - 1e-9))


def act(action: str, selected: np.ndarray, train: dict[str, np.ndarray], train_logits: np.ndarray,
        scores: np.ndarray, round_index: int, strategy: str) -> list[LedgerEntry]:
  """Ledger entries for the selected training rows (`selected` best first)."""
  if action not in ACTIONS:
    raise UserError(f"recovery action '{action}' is unknown (expected one of "
                    f"{', '.join(ACTIONS)})")
  if action == "relabel":
    relabeled = len(selected)
  elif action == "remove":
    relabeled = 0
  else:  # relabel_or_remove: the best-ranked share, the rest removed
    relabeled = relabel_tier(len(selected))
  entries = []
  for rank, i in enumerate(selected):
    old = int(train["label"][i])
    if rank >= relabeled:
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
