"""Moves example columns into a `tf.data.Dataset` (for SeqIO) and back out again.

Text travels as UTF-8 `tf.string` and comes back as Python str; ids, labels and flags
keep the dtypes of `columns.DTYPES`.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf

from gbair_jax.data import columns as columns_lib

# JAX owns the accelerator; tf.data here only moves strings and ints on the host.
try:
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # TF already initialised its devices: too late, harmless
  pass

_TF_DTYPES = {"example_id": tf.int64, "text": tf.string, "label": tf.int32,
              "original_label": tf.int32, "is_corrupted": tf.bool}


def to_dataset(columns: Mapping[str, np.ndarray]) -> tf.data.Dataset:
  """One example per row; an empty split still has the right dtypes."""
  tensors = {}
  for name, values in columns.items():
    dtype = _TF_DTYPES.get(name)
    if name == "text":
      tensors[name] = tf.constant([str(t) for t in values], dtype=tf.string, shape=[len(values)])
    else:
      tensors[name] = tf.constant(values, dtype=dtype)
  return tf.data.Dataset.from_tensor_slices(tensors)


def from_dataset(dataset: tf.data.Dataset, batch_size: int = 65536) -> columns_lib.Columns:
  """Reads a finite dataset of fixed-shape features back into columns (text as Python str)."""
  names = list(dataset.element_spec)
  chunks: dict[str, list[np.ndarray]] = {name: [] for name in names}
  for batch in dataset.batch(batch_size).as_numpy_iterator():
    for name in names:
      chunks[name].append(batch[name])
  columns = {}
  for name in names:
    if chunks[name]:
      values = np.concatenate(chunks[name])
    else:
      spec = dataset.element_spec[name]
      values = np.zeros([0, *spec.shape], dtype=spec.dtype.as_numpy_dtype)
    if name == "text":
      values = columns_lib.text_array([t.decode("utf-8") for t in values])
    elif name in columns_lib.DTYPES:
      values = values.astype(columns_lib.DTYPES[name])
    columns[name] = values
  return columns
