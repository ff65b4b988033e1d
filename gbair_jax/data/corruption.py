"""Label corruption: the synthetic noise G-BAIR is asked to find and repair.

Exactly round(rate x N) examples of the split get a wrong label: flipped for two classes,
uniform over the other classes for more. Which examples, and their new labels, depend only
on (seed, example ids), so a larger rate corrupts a superset of a smaller one's examples.
"""
from __future__ import annotations

import math
import numbers

import gin
import numpy as np
import tensorflow as tf

from gbair_jax.data import example_ids as ids_lib
from gbair_jax.data import tf_columns
from gbair_jax.errors import UserError

MODES = ("auto", "flip", "uniform")
# The gin binding and macro users set; named in every message about them.
RATE_BINDING = "corrupt_labels.rate (gin macro CORRUPTION_RATE)"


def check_rate(rate: object) -> float:
  """The rate as a float, or `UserError` naming the binding unless it is in [0, 1)."""
  if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or math.isnan(rate) or not (
      0.0 <= rate < 1.0):
    raise UserError(f"{RATE_BINDING} = {rate!r}: must be a number in [0, 1)")
  return float(rate)


def check_options(num_classes: int, rate: object, seed: object, mode: object) -> float:
  """Validates the corruption bindings (naming each); returns the rate as a float."""
  rate = check_rate(rate)
  if mode not in MODES:
    raise UserError(f"corrupt_labels.mode = {mode!r}: expected one of {MODES}")
  if mode == "flip" and num_classes != 2:
    raise UserError(f"corrupt_labels.mode = 'flip' needs 2 classes; this task has "
                    f"{num_classes} (use 'uniform')")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise UserError(f"corrupt_labels.seed (gin macro CORRUPTION_SEED) = {seed!r}: "
                    "must be an integer")
  return rate


def corrupted_labels(example_ids: np.ndarray, labels: np.ndarray, num_classes: int,
                     rate: float, seed: int, mode: str = "auto") -> tuple[np.ndarray, np.ndarray]:
  """New labels and the corruption mask for one split (numpy; order-independent).

  Args:
    example_ids: int64 [N] stable ids.
    labels: int [N] clean labels in [0, num_classes).
    num_classes: C >= 2.
    rate: share of examples to corrupt, in [0, 1).
    seed: which examples, and which wrong labels.
    mode: "flip" (C = 2 only), "uniform" (another class uniformly), or "auto" (flip for
      C = 2, else uniform; for C = 2 the two agree).

  Returns:
    (labels int32 [N], is_corrupted bool [N]) with exactly round(rate x N) True.
  """
  rate = check_options(num_classes, rate, seed, mode)
  example_ids = np.asarray(example_ids, dtype=np.int64)
  labels = np.asarray(labels, dtype=np.int32)
  count = int(round(rate * labels.size))
  keys = ids_lib.seeded_hash(example_ids, seed, salt="corrupt/select")
  chosen = np.lexsort((example_ids, keys))[:count]
  new_labels = labels.copy()
  # An offset in [1, C) never lands on the clean label; for C = 2 it is always 1 (a flip).
  offsets = 1 + ids_lib.seeded_hash(example_ids[chosen], seed, salt="corrupt/label") % np.uint64(
      num_classes - 1)
  new_labels[chosen] = (labels[chosen].astype(np.int64) + offsets.astype(np.int64)) % num_classes
  is_corrupted = np.zeros(labels.size, dtype=bool)
  is_corrupted[chosen] = True
  return new_labels, is_corrupted


@gin.configurable
def corrupt_labels(dataset: tf.data.Dataset, num_classes: int, rate: float = 0.0,
                   seed: int = 0, mode: str = "auto") -> tf.data.Dataset:
  """SeqIO preprocessor: corrupts exactly round(rate x N) labels of a finite split.

  Apply it to the training split only (`load_data` does). The examples need
  `example_id`, `label`, `original_label` and `is_corrupted`; it reads the split's ids
  and labels once to choose the examples, then maps the dataset with a lookup table.

  Args:
    dataset: one split, finite.
    num_classes: number of classes of the task.
    rate: gin `corrupt_labels.rate` (macro CORRUPTION_RATE), in [0, 1).
    seed: gin `corrupt_labels.seed` (macro CORRUPTION_SEED).
    mode: gin `corrupt_labels.mode`: "auto", "flip" or "uniform".

  Returns:
    The dataset with `label` and `is_corrupted` changed on the chosen examples.
  """
  if check_options(num_classes, rate, seed, mode) == 0.0:
    return dataset  # nothing to corrupt: skip the pass over the split
  keys_only = dataset.map(lambda ex: {"example_id": ex["example_id"], "label": ex["label"]})
  columns = tf_columns.from_dataset(keys_only)
  new_labels, is_corrupted = corrupted_labels(columns["example_id"], columns["label"],
                                              num_classes, rate, seed, mode)
  if not is_corrupted.any():
    return dataset
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
          tf.constant(columns["example_id"][is_corrupted], tf.int64),
          tf.constant(new_labels[is_corrupted].astype(np.int64), tf.int64)),
      default_value=-1)

  def corrupt(example):
    new_label = table.lookup(example["example_id"])
    hit = new_label >= 0
    return {**example,
            "label": tf.where(hit, tf.cast(new_label, example["label"].dtype), example["label"]),
            "is_corrupted": tf.logical_or(example["is_corrupted"], hit)}

  return dataset.map(corrupt)
