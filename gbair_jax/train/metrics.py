"""Classification metrics for evaluation: accuracy, F1 and ROC AUC, in numpy.

F1 is the positive class's (label 1) for binary tasks and macro F1 for C > 2; AUC is the
binary ROC AUC of p(label 1), or the macro one-vs-rest AUC for C > 2 (the mean over classes
of the ROC AUC of p(c) for c against the rest; a class with no example is left out).

`accuracy` and `f1` are at the argmax (p(label 1) >= 0.5 for two classes). Binary tasks
also get `accuracy_at_threshold` / `f1_at_threshold` at a decision threshold on
p(label 1) chosen on validation (the one maximising validation F1; `threshold` holds it):
a prompt-tuned model's argmax F1 swings with small shifts of its class prior while its
ranking (AUC) does not, and a deployed classifier would pick its threshold on held-out
data anyway. On the validation split itself the threshold is fitted to the same examples,
so its `*_at_threshold` numbers are optimistic; the test split's are honest.
"""
from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
  """Mann-Whitney U form of ROC AUC, with ties counted half."""
  positive = positive.astype(bool)
  num_pos, num_neg = positive.sum(), (~positive).sum()
  if num_pos == 0 or num_neg == 0:
    return float("nan")
  order = np.argsort(scores, kind="mergesort")
  ranks = np.empty(len(scores))
  sorted_scores = scores[order]
  # Average ranks over ties.
  _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
  avg = first + (counts + 1) / 2.0
  ranks[order] = np.repeat(avg, counts)
  return float((ranks[positive].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def f1_for_class(predictions: np.ndarray, labels: np.ndarray, cls: int) -> float:
  tp = np.sum((predictions == cls) & (labels == cls))
  fp = np.sum((predictions == cls) & (labels != cls))
  fn = np.sum((predictions != cls) & (labels == cls))
  return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0


def best_f1_threshold(scores: np.ndarray, positive: np.ndarray) -> float:
  """The threshold t on `scores` maximising F1 of "positive iff score >= t".

  Cuts lie between distinct scores (t is the midpoint of the two scores around the best
  cut, or the lowest score when predicting every example positive is best); on ties in
  F1 the highest threshold wins. 0.5 when there is no positive example or no example.
  """
  scores = np.asarray(scores, np.float64)
  positive = np.asarray(positive, bool)
  num_pos = int(positive.sum())
  if num_pos == 0 or scores.size == 0:
    return 0.5
  values, inverse = np.unique(-scores, return_inverse=True)  # distinct scores, descending
  tp = np.cumsum(np.bincount(inverse, weights=positive, minlength=len(values)))
  predicted = np.cumsum(np.bincount(inverse, minlength=len(values)))
  f1 = 2 * tp / (predicted + num_pos)  # 2tp / (2tp + fp + fn)
  best = int(np.argmax(f1))
  if best == len(values) - 1:
    return float(-values[best])
  return float((-values[best] - values[best + 1]) / 2.0)


def classification_metrics(logits: np.ndarray, labels: np.ndarray,
                           threshold: float | None = None) -> dict[str, float]:
  """{"accuracy", "f1", "auc"} for logits [N, C] against integer labels [N].

  Two classes: also {"threshold", "accuracy_at_threshold", "f1_at_threshold"}, class 1
  predicted iff p(class 1) >= threshold; `threshold=None` picks the F1-maximising one on
  these examples (pass validation's to score test).
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels)
  num_classes = logits.shape[1]
  predictions = logits.argmax(-1)
  probs = softmax(logits)
  if num_classes == 2:
    f1 = f1_for_class(predictions, labels, 1)
    auc = binary_auc(probs[:, 1], labels == 1)
  else:
    f1 = float(np.mean([f1_for_class(predictions, labels, c) for c in range(num_classes)]))
    auc = float(np.nanmean([binary_auc(probs[:, c], labels == c) for c in range(num_classes)]))
  out = {"accuracy": float(np.mean(predictions == labels)), "f1": f1, "auc": auc}
  if num_classes == 2 and len(labels):
    if threshold is None:
      threshold = best_f1_threshold(probs[:, 1], labels == 1)
    at_threshold = (probs[:, 1] >= threshold).astype(labels.dtype)
    out.update(threshold=float(threshold),
               accuracy_at_threshold=float(np.mean(at_threshold == labels)),
               f1_at_threshold=f1_for_class(at_threshold, labels, 1))
  return out


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
  """Area under the precision-recall curve as average precision: sum over distinct score
  thresholds, from the highest, of (recall gained) x (precision there); tied scores enter
  together. NaN without positives."""
  scores = np.asarray(scores, np.float64)
  positive = np.asarray(positive, bool)
  num_pos = int(positive.sum())
  if num_pos == 0:
    return float("nan")
  _, inverse = np.unique(-scores, return_inverse=True)  # distinct scores, descending
  tp = np.cumsum(np.bincount(inverse, weights=positive))
  predicted = np.cumsum(np.bincount(inverse))
  recall_gain = np.diff(np.concatenate([[0.0], tp])) / num_pos
  return float(np.sum(recall_gain * tp / predicted))
