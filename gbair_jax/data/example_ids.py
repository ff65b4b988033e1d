"""Stable example ids and seeded per-example hashes.

Ids come from where an example lives in its source (file, row), never from shuffling, so
the ledger and the corruption mask refer to the same examples in every run and round.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np

from gbair_jax.errors import UserError

# Ids are int64 and non-negative, so they survive JSON, TensorFlow and numpy unchanged.
_ID_MASK = (1 << 63) - 1
_UINT64_MASK = (1 << 64) - 1


def stable_example_id(*parts: object) -> int:
  """A non-negative int64 id from the parts naming a source row (task, file, row...).

  Uses blake2b, not `hash()`, which Python salts per process.
  """
  key = "\x1f".join(str(part) for part in parts).encode("utf-8")
  digest = hashlib.blake2b(key, digest_size=8).digest()
  return int.from_bytes(digest, "little") & _ID_MASK


def seeded_hash(example_ids: np.ndarray, seed: int, salt: str) -> np.ndarray:
  """A uint64 pseudo-random key per example id, fixed by (seed, salt).

  Selection by sorting these keys does not depend on the order examples arrive in, nor
  on numpy's random streams (which numpy may change between versions). `salt` keeps the
  split and the corruption draws independent when they share a seed.
  """
  salt_key = f"{salt}/{int(seed)}".encode("utf-8")
  salt_bits = int.from_bytes(hashlib.blake2b(salt_key, digest_size=8).digest(), "little")
  values = np.ascontiguousarray(example_ids, dtype=np.int64).view(np.uint64)
  # splitmix64 finaliser: a bijection on 64 bits with good avalanche.
  with np.errstate(over="ignore"):
    x = values ^ np.uint64(salt_bits)
    x = x + np.uint64(0x9E3779B97F4A7C15 & _UINT64_MASK)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
  return x


def check_unique_ids(example_ids: np.ndarray, where: Callable[[int], str]) -> None:
  """Raises `UserError` naming both places if two examples share an id.

  Args:
    example_ids: int64 [N].
    where: index -> a string naming that example's origin (file, row, column); called
      only to build the message, so a large set costs no strings.
  """
  example_ids = np.asarray(example_ids, dtype=np.int64)
  if example_ids.size == 0:
    return
  order = np.argsort(example_ids, kind="stable")
  sorted_ids = example_ids[order]
  repeats = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
  if repeats.size:
    first, second = order[repeats[0]], order[repeats[0] + 1]
    raise UserError(f"{where(int(second))}: duplicate example id {int(example_ids[second])} "
                    f"(also at {where(int(first))})")
