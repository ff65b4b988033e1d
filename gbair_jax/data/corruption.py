"""Label corruption: the synthetic noise G-BAIR is asked to find and repair.

Noise types (gin `corrupt_labels.mode`, macro CORRUPTION_MODE):
  auto / flip / uniform  exactly round(rate x N) examples get a wrong label: flipped for
      two classes, uniform over the other classes for more ("auto": flip for C = 2, else
      uniform). Which examples depend only on (seed, example ids).
  class_conditional  a transition matrix `corrupt_labels.transition` (rows: clean class,
      columns: new class; off-diagonal entries are flip probabilities, the diagonal is
      ignored): exactly round(T[i, j] x N_i) summed over j of class i's N_i examples are
      corrupted, e.g. ((0, 0.15), (0.45, 0)) flips 45% of class 1 to class 0 and 15% of
      class 0 to class 1; ((0, 0), (0.4, 0)) is one-directional. `rate` is unused (leave
      CORRUPTION_RATE at 0: the matrix says how many).
  instance_dependent  exactly round(rate x N) examples (apportioned over the classes by
      size unless instance_stratify=False), drawn without replacement with
      weight (1 - p_ref(clean label | text)) ** instance_power, where p_ref is a
      bag-of-words logistic regression fitted on the clean labels, out of fold
      (data/noise_reference.py): the texts a reader would find ambiguous get the wrong
      label, the plausible-looking flips that fool loss ranking. With C > 2 the new label
      is drawn in proportion to p_ref over the other classes.
For every mode, a larger rate (or matrix entry) corrupts a superset of a smaller one's
examples under the same seed, and the result does not depend on the order examples
arrive in. The ground truth stays in `original_label` / `is_corrupted`.
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

MODES = ("auto", "flip", "uniform", "class_conditional", "instance_dependent")
# The gin binding and macro users set; named in every message about them.
RATE_BINDING = "corrupt_labels.rate (gin macro CORRUPTION_RATE)"


def check_rate(rate: object) -> float:
  """The rate as a float, or `UserError` naming the binding unless it is in [0, 1)."""
  if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or math.isnan(rate) or not (
      0.0 <= rate < 1.0):
    raise UserError(f"{RATE_BINDING} = {rate!r}: must be a number in [0, 1)")
  return float(rate)


def check_transition(transition: object, num_classes: int) -> np.ndarray:
  """The transition matrix as float [C, C] with a zero diagonal, or `UserError`."""
  binding = "corrupt_labels.transition"
  try:
    matrix = np.array(transition, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise UserError(f"{binding} = {transition!r}: must be a {num_classes} x {num_classes} "
                    "matrix of numbers") from e
  if matrix.shape != (num_classes, num_classes):
    raise UserError(f"{binding} = {transition!r}: must be a {num_classes} x {num_classes} "
                    f"matrix (rows: clean class, columns: new class); got shape {matrix.shape}")
  np.fill_diagonal(matrix, 0.0)
  if not np.all(np.isfinite(matrix)) or (matrix < 0).any() or (matrix.sum(1) >= 1).any():
    raise UserError(f"{binding} = {transition!r}: off-diagonal entries must be >= 0 and "
                    "each row's off-diagonal sum below 1")
  return matrix


def check_options(num_classes: int, rate: object, seed: object, mode: object,
                  transition: object = None) -> float:
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
  if mode == "class_conditional":
    if transition is None:
      raise UserError("corrupt_labels.mode = 'class_conditional' needs "
                      "corrupt_labels.transition (a C x C matrix of flip probabilities)")
    if rate != 0.0:
      raise UserError(f"{RATE_BINDING} = {rate!r}: mode 'class_conditional' takes its "
                      "rates from corrupt_labels.transition; leave the rate at 0")
    check_transition(transition, num_classes)
  elif transition is not None:
    raise UserError(f"corrupt_labels.transition is set but corrupt_labels.mode = {mode!r} "
                    "does not use it (set the mode to 'class_conditional')")
  return rate


def _unit_interval(hashes: np.ndarray) -> np.ndarray:
  """uint64 hashes -> floats in (0, 1)."""
  return ((hashes >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53


def _first_by_hash(example_ids: np.ndarray, members: np.ndarray, count: int, seed: int) -> np.ndarray:
  keys = ids_lib.seeded_hash(example_ids[members], seed, salt="corrupt/select")
  return members[np.lexsort((example_ids[members], keys))[:count]]


def _draw_from(example_ids: np.ndarray, weights: np.ndarray, seed: int) -> np.ndarray:
  """One class per row, drawn in proportion to `weights` [n, C] (rows sum > 0)."""
  u = _unit_interval(ids_lib.seeded_hash(example_ids, seed, salt="corrupt/label"))
  cumulative = np.cumsum(weights / weights.sum(1, keepdims=True), axis=1)
  return np.minimum((cumulative < u[:, None]).sum(1), weights.shape[1] - 1)


def _apportion(total: int, sizes: np.ndarray) -> np.ndarray:
  """Integer shares of `total` in proportion to `sizes` that sum to `total` (largest
  remainder; ties to the lower class index)."""
  exact = total * sizes / max(sizes.sum(), 1)
  shares = np.floor(exact).astype(np.int64)
  order = np.lexsort((np.arange(len(sizes)), -(exact - shares)))
  shares[order[:total - shares.sum()]] += 1
  return np.minimum(shares, sizes)


def corrupted_labels(example_ids: np.ndarray, labels: np.ndarray, num_classes: int,
                     rate: float, seed: int, mode: str = "auto", transition=None,
                     texts=None, instance_power: float = 2.0, instance_folds: int = 5,
                     instance_stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """New labels and the corruption mask for one split (numpy; order-independent).

  Args:
    example_ids: int64 [N] stable ids.
    labels: int [N] clean labels in [0, num_classes).
    num_classes: C >= 2.
    rate: share of examples to corrupt, in [0, 1) (0 for class_conditional).
    seed: which examples, and which wrong labels.
    mode: one of MODES (see the module docstring).
    transition: C x C flip probabilities (class_conditional only).
    texts: [N] texts (instance_dependent only: the reference model reads them).
    instance_power: how steeply the flip weight rises with the reference model's
      uncertainty 1 - p_ref(label) (instance_dependent).
    instance_folds: folds of the reference model's out-of-fold probabilities.
    instance_stratify: corrupt each class in proportion to its size (round(rate x N)
      apportioned over the classes), drawing by uncertainty within each class; False
      draws over the whole split, which piles the flips onto the class the reference
      model is least sure of (often a minority class, past half of its examples at 30%).

  Returns:
    (labels int32 [N], is_corrupted bool [N]).
  """
  rate = check_options(num_classes, rate, seed, mode, transition)
  example_ids = np.asarray(example_ids, dtype=np.int64)
  labels = np.asarray(labels, dtype=np.int32)
  new_labels = labels.copy()
  is_corrupted = np.zeros(labels.size, dtype=bool)
  if mode == "class_conditional":
    matrix = check_transition(transition, num_classes)
    for c in range(num_classes):
      members = np.flatnonzero(labels == c)
      count = int(round(matrix[c].sum() * members.size))
      if count == 0:
        continue
      chosen = _first_by_hash(example_ids, members, count, seed)
      new_labels[chosen] = _draw_from(example_ids[chosen],
                                      np.broadcast_to(matrix[c], (count, num_classes)), seed)
      is_corrupted[chosen] = True
    return new_labels, is_corrupted
  count = int(round(rate * labels.size))
  if count == 0:
    return new_labels, is_corrupted
  if mode == "instance_dependent":
    if texts is None:
      raise ValueError("instance_dependent corruption needs the texts")
    from gbair_jax.data import noise_reference  # pylint: disable=g-import-not-at-top
    if isinstance(instance_power, bool) or not isinstance(instance_power, numbers.Real) or not (
        instance_power >= 0):
      raise UserError(f"corrupt_labels.instance_power = {instance_power!r}: must be a number >= 0")
    if isinstance(instance_folds, bool) or not isinstance(instance_folds, (int, np.integer)) or (
        instance_folds < 1):
      raise UserError(f"corrupt_labels.instance_folds = {instance_folds!r}: must be an integer "
                      ">= 1 (1 = fit and score on the same examples)")
    probs = noise_reference.out_of_fold_probabilities(
        texts, labels, example_ids, num_classes, seed, num_folds=instance_folds)
    uncertainty = np.maximum(1.0 - probs[np.arange(labels.size), labels], 1e-6)
    # Weighted sampling without replacement (Efraimidis & Spirakis): the largest keys
    # log(u) / w; fixed keys, so a larger rate takes a superset.
    u = _unit_interval(ids_lib.seeded_hash(example_ids, seed, salt="corrupt/select"))
    keys = np.log(u) / uncertainty ** float(instance_power)
    if instance_stratify:
      per_class = _apportion(count, np.bincount(labels, minlength=num_classes))
      chosen = np.concatenate([
          members[np.lexsort((example_ids[members], -keys[members]))[:k]]
          for members, k in ((np.flatnonzero(labels == c), per_class[c])
                             for c in range(num_classes))])
    else:
      chosen = np.lexsort((example_ids, -keys))[:count]
    others = probs[chosen] + 1e-12  # never all zero
    others[np.arange(len(chosen)), labels[chosen]] = 0.0
    new_labels[chosen] = _draw_from(example_ids[chosen], others, seed)
    is_corrupted[chosen] = True
    return new_labels, is_corrupted
  chosen = _first_by_hash(example_ids, np.arange(labels.size), count, seed)
  # An offset in [1, C) never lands on the clean label; for C = 2 it is always 1 (a flip).
  offsets = 1 + ids_lib.seeded_hash(example_ids[chosen], seed, salt="corrupt/label") % np.uint64(
      num_classes - 1)
  new_labels[chosen] = (labels[chosen].astype(np.int64) + offsets.astype(np.int64)) % num_classes
  is_corrupted[chosen] = True
  return new_labels, is_corrupted


@gin.configurable
def corrupt_labels(dataset: tf.data.Dataset, num_classes: int, rate: float = 0.0,
                   seed: int = 0, mode: str = "auto", transition=None,
                   instance_power: float = 2.0, instance_folds: int = 5,
                   instance_stratify: bool = True) -> tf.data.Dataset:
  """SeqIO preprocessor: corrupts the labels of a finite split (see the module docstring).

  Apply it to the training split only (`load_data` does). The examples need
  `example_id`, `label`, `original_label` and `is_corrupted`; it reads the split's ids
  and labels (and texts, for instance_dependent) once to choose the examples, then maps
  the dataset with a lookup table.

  Args:
    dataset: one split, finite.
    num_classes: number of classes of the task.
    rate: gin `corrupt_labels.rate` (macro CORRUPTION_RATE), in [0, 1).
    seed: gin `corrupt_labels.seed` (macro CORRUPTION_SEED).
    mode: gin `corrupt_labels.mode` (macro CORRUPTION_MODE): one of MODES.
    transition: gin `corrupt_labels.transition`, C x C (class_conditional).
    instance_power, instance_folds, instance_stratify: instance_dependent's weight
      exponent, the folds of its reference model, and whether each class keeps its share.

  Returns:
    The dataset with `label` and `is_corrupted` changed on the chosen examples.
  """
  if check_options(num_classes, rate, seed, mode, transition) == 0.0 and (
      mode != "class_conditional"):
    return dataset  # nothing to corrupt: skip the pass over the split
  wanted = ("example_id", "label", "text") if mode == "instance_dependent" else ("example_id", "label")
  keys_only = dataset.map(lambda ex: {k: ex[k] for k in wanted})
  columns = tf_columns.from_dataset(keys_only)
  new_labels, is_corrupted = corrupted_labels(
      columns["example_id"], columns["label"], num_classes, rate, seed, mode,
      transition=transition, texts=columns.get("text"), instance_power=instance_power,
      instance_folds=instance_folds, instance_stratify=instance_stratify)
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
