"""The columnar example format: a dict of equal-length numpy arrays, one row per example.

Sources build columns {example_id, text, label}; `load_data` returns them with
`original_label` and `is_corrupted` added. Text is an object array of Python str.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

SPLITS = ("train", "validation", "test")
Columns = dict[str, np.ndarray]

DTYPES = {"example_id": np.int64, "text": np.object_, "label": np.int32,
          "original_label": np.int32, "is_corrupted": np.bool_}


def text_array(texts: Sequence[str]) -> np.ndarray:
  """A 1-D object array of Python str (numpy would otherwise pick a fixed-width dtype)."""
  array = np.empty(len(texts), dtype=object)
  array[:] = list(texts)
  return array


def make_columns(example_ids: Sequence[int], texts: Sequence[str],
                 labels: Sequence[int]) -> Columns:
  """Source columns with the contract's dtypes."""
  return {"example_id": np.asarray(example_ids, dtype=np.int64).reshape(-1),
          "text": text_array(texts),
          "label": np.asarray(labels, dtype=np.int32).reshape(-1)}


def take_rows(columns: Mapping[str, np.ndarray], rows: np.ndarray) -> Columns:
  """The given rows of every column."""
  return {name: values[rows] for name, values in columns.items()}


def read_only(columns: Columns) -> Columns:
  """Marks the arrays read-only: for columns kept in an in-memory cache and shared."""
  for values in columns.values():
    values.flags.writeable = False
  return columns
