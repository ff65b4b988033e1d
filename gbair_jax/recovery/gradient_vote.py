"""`class_vote`: a class-balanced vote of the clean validation labels in gradient space.

With two verbalizers and softmax cross-entropy, the loss gradient of an example factors as
g_c(z, y) = -s(y) r_c(z) u_c(z): a sign for the label, the residual 1 - p(y | z), and the
label-free margin gradient u_c(z) = g_c(z, 0) - g_c(z, 1) = d(logit_1 - logit_0)/d(prompt).
So TracIn scores re-weight the loss signal by residuals (issue 12, "why today's score cannot
beat loss"). This strategy keeps only the geometry and lets every clean validation example
vote, residual or not:

  k(z, x) = sum over checkpoints c of lr_c cos(u_c(z), u_c(x))
  S_k(z)  = mean of k(z, v) over the validation examples v of class k
  score   = S_other(z) - S_label(z)

An example whose margin gradient looks like the other class's clean examples more than like
its own label's is a suspect; the per-class means make both flip directions count equally
however imbalanced the classes are (Nguyen-Duc et al., ACL 2023: class-based influence).
Two classes only (the margin gradient of more classes needs a target class).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from gbair_jax.errors import UserError
from gbair_jax.influence import tracin
from gbair_jax.models.classifier import ClassifierSpec
from gbair_jax.recovery.context import RoundContext
from gbair_jax.recovery.strategies import register
from gbair_jax.recovery.tracin_strategies import _batches, _in_train_order


@dataclasses.dataclass(frozen=True)
class MarginLoss:
  """logit_1 - logit_0 per example, in the TracIn engine's loss contract; its gradient is
  the label-free margin gradient u(z). Hashable (a jit static argument) through `spec`."""

  spec: ClassifierSpec

  def __call__(self, prompt, frozen, batch, per_example_prompt=None):
    logits = self.spec.logits(prompt, frozen, batch["tokens"], batch["mask"], per_example_prompt)
    return (logits[:, 1] - logits[:, 0]).astype("float32")


def class_votes(kernel: np.ndarray, query_labels: np.ndarray, num_classes: int) -> np.ndarray:
  """S [N, C]: mean kernel value of each training row over the queries of each class
  (NaN for a class without queries)."""
  votes = np.full((kernel.shape[0], num_classes), np.nan)
  for k in range(num_classes):
    members = query_labels == k
    if members.any():
      votes[:, k] = kernel[:, members].mean(axis=1)
  return votes


def vote_scores(votes: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """S_other - S_label for two classes; -inf where a class had no voter."""
  rows = np.arange(len(labels))
  score = votes[rows, 1 - labels] - votes[rows, labels]
  return np.where(np.isfinite(score), score, -np.inf)


@register("class_vote")
def class_vote_strategy(ctx: RoundContext) -> np.ndarray:
  """Class-balanced clean-label vote of the validation set in margin-gradient space."""
  if len(ctx.spec.label_names) != 2:
    raise UserError(f"recovery strategy 'class_vote' needs 2 classes; this task has "
                    f"{len(ctx.spec.label_names)}")
  options = tracin.GradientOptions(normalize=True)
  result = tracin.tracin_scores(
      MarginLoss(ctx.spec), ctx.checkpoints, ctx.frozen, _batches(ctx, ctx.train, per_host=True),
      _batches(ctx, ctx.validation), options=options, top_k=1, keep_scores=True,
      progress=ctx.progress)
  label_of = dict(zip(ctx.validation["example_id"].tolist(), ctx.validation["label"].tolist()))
  query_labels = np.array([label_of[int(i)] for i in result.query_ids])
  votes = class_votes(np.asarray(result.scores, np.float64), query_labels, 2)
  per_class = [_in_train_order(ctx, result.example_ids, votes[:, k]) for k in range(2)]
  return vote_scores(np.stack(per_class, axis=1), ctx.train["label"])
