"""Fixed-size batches over tokenised splits (numpy columns with `tokens` and `mask`).

Every batch has the same shape (the last one is padded and marked by `valid`), so jitted
steps compile once. Shuffling is a pure function of (seed, epoch): resuming at an epoch
replays exactly the order an uninterrupted run would have seen.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

Arrays = dict[str, np.ndarray]


MODEL_KEYS = ("tokens", "mask", "label", "example_id")
TRIM_MULTIPLE = 16  # order-free passes trim padding to a multiple of this (iterate_batches)


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


class Batches:
  """The batches of one pass, re-iterable and sized, so progress bars can show a total."""

  def __init__(self, make: Callable[[], Iterator[dict[str, np.ndarray]]], count: int):
    self._make, self._count = make, count

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self._make()

  def __len__(self) -> int:
    return self._count


def iterate_batches(arrays: Arrays, batch_size: int, order: np.ndarray | None = None,
                    keys: tuple[str, ...] = MODEL_KEYS,
                    trim_multiple: int | None = None) -> Batches:
  """Dicts of `keys` [batch_size, ...] plus `valid` (False on padding rows), one per batch.

  `trim_multiple`: cut `tokens`/`mask` to the batch's longest row rounded up to a multiple
  of this (texts are right-padded, so the cut columns are padding every row shares). Pair it
  with `length_order` in passes whose result does not depend on order (evaluation, TracIn
  scoring): short texts then stop paying for the padding of long ones, at the cost of one
  compile per distinct width (at most length / trim_multiple).
  """
  num = len(arrays["label"])
  order = np.arange(num) if order is None else order

  def generate() -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, num, batch_size):
      index = order[start:start + batch_size]
      pad = batch_size - len(index)
      # Padding repeats the first row (a real example) so no NaN can come from empty text.
      padded = np.concatenate([index, np.full(pad, index[0], index.dtype)]) if pad else index
      batch = {k: arrays[k][padded] for k in keys}
      batch["valid"] = np.arange(batch_size) < len(index)
      if trim_multiple and "mask" in batch:
        longest = max(int(batch["mask"].sum(1).max()), 1)
        width = min(-(-longest // trim_multiple) * trim_multiple, batch["mask"].shape[1])
        for key in ("tokens", "mask"):
          if key in batch:
            batch[key] = batch[key][:, :width]
      yield batch

  return Batches(generate, num_batches(num, batch_size))


def length_order(arrays: Arrays) -> np.ndarray:
  """Example indices from the shortest text to the longest (stable)."""
  return np.argsort(arrays["mask"].sum(1), kind="stable")


def num_batches(num_examples: int, batch_size: int) -> int:
  return -(-num_examples // batch_size)
