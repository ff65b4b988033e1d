"""Classification metrics for evaluation: accuracy, F1 and ROC AUC, in numpy.

F1 is the positive class's (label 1) for binary tasks and macro F1 for C > 2; AUC is the
binary ROC AUC of p(label 1), or the macro one-vs-rest AUC for C > 2.
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


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """{"accuracy", "f1", "auc"} for logits [N, C] against integer labels [N]."""
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
  return {"accuracy": float(np.mean(predictions == labels)), "f1": f1, "auc": auc}
