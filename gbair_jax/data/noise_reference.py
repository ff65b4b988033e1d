"""A small reference classifier for instance-dependent label noise, in numpy.

Instance-dependent noise flips the labels a plausible reader would get wrong: the flip
probability of an example rises with how unsure a reference model is of its clean label.
The reference model here is a bag-of-words multinomial logistic regression (binary word
presence, each row scaled to unit norm, L2 penalty), fitted on the clean labels. Its
probabilities are out-of-fold: the model that scores an example never saw it, so the
uncertainty is the text's ambiguity rather than what one fit happened to memorise.

Everything is a function of (texts, labels, example ids, seed): no numpy random stream, a
fixed number of full-batch gradient steps, so the same call gives the same numbers.
"""
from __future__ import annotations

import re

import numpy as np

from gbair_jax.data import example_ids as ids_lib

_WORD = re.compile(r"[a-z0-9']+")


def tokenize(text: str) -> list[str]:
  return _WORD.findall(str(text).lower())


def bag_of_words(texts, min_count: int = 2, max_features: int = 20000):
  """Sparse binary word presence, row-normalised: (rows, cols, values, num_features).

  The vocabulary keeps words in at least `min_count` texts (at most `max_features` of
  them, the most frequent first, ties by the word), so a word seen once is no feature.
  """
  docs = [sorted(set(tokenize(t))) for t in texts]
  counts: dict[str, int] = {}
  for doc in docs:
    for word in doc:
      counts[word] = counts.get(word, 0) + 1
  vocab = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
  index = {w: i for i, w in enumerate(vocab[:max_features])}
  rows, cols = [], []
  for r, doc in enumerate(docs):
    for word in doc:
      j = index.get(word)
      if j is not None:
        rows.append(r)
        cols.append(j)
  rows = np.asarray(rows, np.int64)
  cols = np.asarray(cols, np.int64)
  per_row = np.bincount(rows, minlength=len(docs)).astype(np.float64)
  values = 1.0 / np.sqrt(np.maximum(per_row[rows], 1.0))
  return rows, cols, values, len(index)


class _Sparse:
  """A CSR-free sparse matrix: X @ W and X.T @ R with bincount / fancy indexing."""

  def __init__(self, rows, cols, values, shape):
    self.rows, self.cols, self.values, self.shape = rows, cols, values, shape

  def take_rows(self, keep: np.ndarray) -> "_Sparse":
    new_index = np.full(self.shape[0], -1, np.int64)
    new_index[keep] = np.arange(len(keep))
    mask = new_index[self.rows] >= 0
    return _Sparse(new_index[self.rows[mask]], self.cols[mask], self.values[mask],
                   (len(keep), self.shape[1]))

  def matmul(self, weights: np.ndarray) -> np.ndarray:  # [N, V] @ [V, C]
    contrib = weights[self.cols] * self.values[:, None]
    out = np.zeros((self.shape[0], weights.shape[1]))
    for c in range(weights.shape[1]):
      out[:, c] = np.bincount(self.rows, weights=contrib[:, c], minlength=self.shape[0])
    return out

  def rmatmul(self, residuals: np.ndarray) -> np.ndarray:  # [V, N] @ [N, C]
    contrib = residuals[self.rows] * self.values[:, None]
    out = np.zeros((self.shape[1], residuals.shape[1]))
    for c in range(residuals.shape[1]):
      out[:, c] = np.bincount(self.cols, weights=contrib[:, c], minlength=self.shape[1])
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=1, keepdims=True)


def fit_logistic(features: _Sparse, labels: np.ndarray, num_classes: int, l2: float = 1e-4,
                 steps: int = 300, learning_rate: float = 2.0):
  """Multinomial logistic regression by Nesterov-accelerated full-batch gradient descent.

  Returns (weights [V, C], bias [C]). Rows have unit norm, so the loss gradient is
  Lipschitz with a constant near 1 and a fixed step of about 1-2 converges.
  """
  n, v = features.shape
  onehot = np.eye(num_classes)[labels]
  weights = np.zeros((v, num_classes))
  bias = np.log(np.maximum(onehot.mean(0), 1e-6))
  prev_w, prev_b = weights.copy(), bias.copy()
  for step in range(1, steps + 1):
    momentum = (step - 1) / (step + 2)
    look_w = weights + momentum * (weights - prev_w)
    look_b = bias + momentum * (bias - prev_b)
    residual = (_softmax(features.matmul(look_w) + look_b) - onehot) / n
    grad_w = features.rmatmul(residual) + l2 * look_w
    grad_b = residual.sum(0)
    prev_w, prev_b = weights, bias
    weights = look_w - learning_rate * grad_w
    bias = look_b - learning_rate * grad_b
  return weights, bias


def out_of_fold_probabilities(texts, labels: np.ndarray, example_ids: np.ndarray,
                              num_classes: int, seed: int, num_folds: int = 5,
                              l2: float = 1e-4) -> np.ndarray:
  """p(class | text) [N, C] for every example from a fit on the other folds.

  Folds: examples sorted by a seeded hash of their ids, dealt round-robin within each
  class (stratified), so the folds do not depend on the order examples arrive in.
  """
  labels = np.asarray(labels, np.int64)
  n = len(labels)
  if n == 0:
    return np.zeros((0, num_classes))
  rows, cols, values, num_features = bag_of_words(texts)
  features = _Sparse(rows, cols, values, (n, max(num_features, 1)))
  folds = stratified_folds(example_ids, labels, num_folds, seed, salt="noise/reference")
  probs = np.zeros((n, num_classes))
  for k in range(max(folds.max() + 1, 1)):
    held = np.flatnonzero(folds == k)
    fit_rows = np.flatnonzero(folds != k) if num_folds > 1 else held
    weights, bias = fit_logistic(features.take_rows(fit_rows), labels[fit_rows], num_classes, l2)
    probs[held] = _softmax(features.take_rows(held).matmul(weights) + bias)
  return probs


def stratified_folds(example_ids: np.ndarray, labels: np.ndarray, num_folds: int, seed: int,
                     salt: str) -> np.ndarray:
  """Fold index in [0, num_folds) per example: within each class, examples in seeded-hash
  order are dealt round-robin (class shares equal in every fold, up to one example)."""
  example_ids = np.asarray(example_ids, np.int64)
  labels = np.asarray(labels)
  folds = np.zeros(len(labels), np.int64)
  keys = ids_lib.seeded_hash(example_ids, seed, salt=salt)
  offset = 0
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    ordered = members[np.lexsort((example_ids[members], keys[members]))]
    # Continue the deal where the last class stopped, so small classes do not all start
    # in fold 0.
    folds[ordered] = (np.arange(len(ordered)) + offset) % max(num_folds, 1)
    offset += len(ordered)
  return folds
