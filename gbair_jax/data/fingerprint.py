"""A fingerprint of loaded data: ids, texts and labels of every split, after corruption.

A run records it with its config; a rerun whose data differ (a source file edited in
place, rows dropped, labels swapped) is refused instead of reusing rounds trained on
other data.
"""
from __future__ import annotations

import hashlib
import struct

import numpy as np

from gbair_jax.data.dataset import LabeledData

_COLUMNS = ("example_id", "label", "original_label", "is_corrupted")


def _split_digest(columns: dict[str, np.ndarray]) -> str:
  digest = hashlib.sha256()
  for name in _COLUMNS:
    dtype = {"example_id": "<i8", "is_corrupted": "|b1"}.get(name, "<i4")
    digest.update(name.encode("utf-8"))
    digest.update(np.ascontiguousarray(columns[name], dtype=dtype).tobytes())
  for text in columns["text"]:
    encoded = str(text).encode("utf-8", "surrogatepass")
    digest.update(struct.pack("<Q", len(encoded)))  # length prefix: no two texts merge
    digest.update(encoded)
  return digest.hexdigest()


def data_fingerprint(data: LabeledData) -> dict:
  """{"sha256", "label_names", "splits": {split: {"num_examples", "sha256"}}} (JSON-ready)."""
  splits = {name: {"num_examples": int(columns["label"].size),
                   "sha256": _split_digest(columns)}
            for name, columns in sorted(data.splits.items())}
  whole = hashlib.sha256(repr((list(data.label_names),
                               [(n, s["sha256"]) for n, s in splits.items()])).encode("utf-8"))
  return {"sha256": whole.hexdigest(), "label_names": list(data.label_names), "splits": splits}


def describe_difference(recorded: dict, current: dict) -> str:
  """What differs between two fingerprints, in a few words for a one-line error."""
  if recorded.get("label_names") != current["label_names"]:
    return f"label names {recorded.get('label_names')} then, {current['label_names']} now"
  for name, split in current["splits"].items():
    before = recorded.get("splits", {}).get(name, {})
    if before.get("num_examples") != split["num_examples"]:
      return (f"split {name!r}: {before.get('num_examples')} examples then, "
              f"{split['num_examples']} now")
    if before.get("sha256") != split["sha256"]:
      return f"split {name!r}: same size, different ids, texts or labels"
  return "different content"
