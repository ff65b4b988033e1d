"""Tokenised splits as numpy arrays and fixed-size batches over them.

Every batch has the same shape (the last one is padded and marked by `valid`), so jitted
steps compile once. Shuffling is a pure function of (seed, epoch): resuming at an epoch
replays exactly the order an uninterrupted run would have seen.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from gbair_jax.models.backbone import PretrainedBackbone

Arrays = dict[str, np.ndarray]


def tokenize_split(split: Arrays, backbone: PretrainedBackbone, length: int) -> Arrays:
  """Adds `tokens` and `mask` [N, length] to a split's columns (text is kept for reports)."""
  tokens, mask = backbone.encode_texts(list(split["text"]), length)
  out = dict(split)
  out["tokens"] = np.asarray(tokens, np.int32)
  out["mask"] = np.asarray(mask, np.int32)
  return out


MODEL_KEYS = ("tokens", "mask", "label", "example_id")


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def iterate_batches(arrays: Arrays, batch_size: int, order: np.ndarray | None = None,
                    keys: tuple[str, ...] = MODEL_KEYS) -> Iterator[dict[str, np.ndarray]]:
  """Yields dicts of `keys` [batch_size, ...] plus `valid` (False on padding rows)."""
  num = len(arrays["label"])
  order = np.arange(num) if order is None else order
  for start in range(0, num, batch_size):
    index = order[start:start + batch_size]
    pad = batch_size - len(index)
    # Padding repeats the first row (a real example) so no NaN can come from empty text.
    padded = np.concatenate([index, np.full(pad, index[0], index.dtype)]) if pad else index
    batch = {k: arrays[k][padded] for k in keys}
    batch["valid"] = np.arange(batch_size) < len(index)
    yield batch


def num_batches(num_examples: int, batch_size: int) -> int:
  return -(-num_examples // batch_size)
