"""Seeded, stratified, deterministic carving of validation/test splits out of one file.

Which split an example falls in depends only on its example id, its label, the seed and
the fractions: reordering the source file or upgrading numpy moves no example.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from gbair_jax.data import example_ids as ids_lib
from gbair_jax.errors import UserError


def check_fractions(fractions: Mapping[str, float], binding: str) -> None:
  """Raises `UserError` unless every fraction is in [0, 1) and together they are < 1."""
  for name, fraction in fractions.items():
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not (
        0.0 <= fraction < 1.0):
      raise UserError(f"{binding}.{name} = {fraction!r}: must be a number in [0, 1)")
  if sum(fractions.values()) >= 1.0:
    raise UserError(f"{binding}: {dict(fractions)} leave no training examples "
                    "(they must add up to less than 1)")


def stratified_split(example_ids: np.ndarray, labels: np.ndarray,
                     fractions: Mapping[str, float], seed: int,
                     remainder: str = "train") -> dict[str, np.ndarray]:
  """Row indices per split: each class gives round(fraction x its size) to each split.

  Args:
    example_ids: int64 [N], the examples' stable ids.
    labels: int [N].
    fractions: split name -> fraction of each class, in order of carving (e.g.
      {"validation": 0.1, "test": 0.1}).
    seed: which examples go where.
    remainder: the split that receives what the fractions leave.

  Returns:
    split name -> sorted int64 row indices; every row is in exactly one split.
  """
  example_ids = np.asarray(example_ids, dtype=np.int64)
  labels = np.asarray(labels)
  keys = ids_lib.seeded_hash(example_ids, seed, salt="split")
  parts: dict[str, list[np.ndarray]] = {name: [] for name in (*fractions, remainder)}
  for label in np.unique(labels):
    rows = np.flatnonzero(labels == label)
    # Ties in the key (practically impossible) fall back to the id: still deterministic.
    rows = rows[np.lexsort((example_ids[rows], keys[rows]))]
    start = 0
    for name, fraction in fractions.items():
      count = int(round(fraction * rows.size))
      parts[name].append(rows[start:start + count])
      start += count
    parts[remainder].append(rows[start:])
  return {name: np.sort(np.concatenate(chunks)).astype(np.int64) if chunks
          else np.zeros([0], np.int64) for name, chunks in parts.items()}
