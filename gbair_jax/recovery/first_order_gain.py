"""`first_order_gain`: the predicted change in validation AUC from relabelling one training
example, through a label-free Gauss-Newton preconditioner.

Relabelling z from its label y to the other class o of its pair {low < high} changes its
cross-entropy gradient by g(z, o) - g(z, y) = d(logit_y - logit_o)/d(prompt) = -s u(z),
with u(z) = d(logit_high - logit_low)/d(prompt) (gradient_vote.MarginLoss) and s = +1 when
o is the high class, -1 when it is the low one: exact, whatever the model's probabilities.
By the influence function the trained prompt then moves by -H^-1 (-s u(z)) / N, so a
validation objective A moves by

  gain(z) = s <u(z), H^-1 grad A> / N          (N drops out of the ranking)

  A = mean over validation pairs (i of class high, j of class low) of log sigmoid(m_i - m_j),
      m = logit_high - logit_low at the final prompt: the pairwise logistic surrogate of AUC,
      so every clean validation example counts, weighted by how likely its pairs are
      mis-ordered (not by its own residual, as TracIn's query gradients are);
  H = (1/N) sum over training rows of q (1 - q) u u^T + lambda I: the Gauss-Newton matrix of
      the cross-entropy restricted to each row's pair (q = p(high | {low, high}); no label
      enters), lambda = damping x trace / d.

d = prompt length x width is small, so H^-1 is applied exactly: directly when d <= N, by
the Woodbury identity on the N x N side otherwise (memory: the N x d margin gradients, in
float64, and a min(N, d)^2 factor). H^-1 takes out the direction every
margin gradient shares (the one gradient_vote.py centres away by hand) and weighs the rest
by how little the training set already pins it down. Only a positive predicted gain makes a
suspect; the rest score -inf, so a round changes no more labels than are predicted to help.
More than two classes: pairs as in gradient_vote.py (a training example's label and its
most likely other class; that pair's validation examples form A), one H for all rows.
"""
from __future__ import annotations

import gin
import numpy as np

from gbair_jax.errors import UserError
from gbair_jax.influence import tracin
from gbair_jax.recovery import gradient_vote
from gbair_jax.recovery.context import RoundContext
from gbair_jax.recovery.registry import register


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


def margin_gradients(ctx: RoundContext, arrays: dict[str, np.ndarray], low, high) -> np.ndarray:
  """u [rows, d] of `arrays` at the final prompt, in the rows' order (float64)."""
  found = tracin.query_gradients(gradient_vote.MarginLoss(ctx.spec), [(ctx.final_prompt, 1.0)],
                                 ctx.frozen, gradient_vote.pair_batches(ctx, arrays, low, high),
                                 mesh=ctx.mesh)
  row = {int(i): n for n, i in enumerate(arrays["example_id"])}
  order = np.array([row[int(i)] for i in found.example_ids], np.int64)
  out = np.empty((len(order), found.features.shape[-1]), np.float64)
  out[order] = found.features[0]
  return out


def auc_surrogate_gradient(u: np.ndarray, margins: np.ndarray, is_high: np.ndarray) -> np.ndarray:
  """grad A [d] of A = mean over (i high, j low) of log sigmoid(m_i - m_j); zeros when a
  class has no example."""
  high, low = np.flatnonzero(is_high), np.flatnonzero(~is_high)
  if not len(high) or not len(low):
    return np.zeros(u.shape[1])
  misorder = _sigmoid(-(margins[high][:, None] - margins[low][None, :]))  # d A / d m_i - m_j
  pairs = misorder.size
  return (misorder.sum(axis=1) @ u[high] - misorder.sum(axis=0) @ u[low]) / pairs


class GaussNewtonSolver:
  """Applies (B^T B + lambda I)^-1, B = sqrt(weights / N) u, exactly (see the module)."""

  def __init__(self, u: np.ndarray, weights: np.ndarray, damping: float):
    self.b = u * np.sqrt(weights / len(u))[:, None]
    self.damping = damping * max(float(np.sum(self.b * self.b)) / u.shape[1], 1e-30)
    num, dim = self.b.shape
    if dim <= num:  # d x d system
      self.factor = np.linalg.cholesky(self.b.T @ self.b + self.damping * np.eye(dim))
    else:  # Woodbury: H^-1 a = (a - B^T (lambda I_N + B B^T)^-1 B a) / lambda
      self.factor = np.linalg.cholesky(self.b @ self.b.T + self.damping * np.eye(num))
    self.direct = dim <= num

  def _cho_solve(self, rhs: np.ndarray) -> np.ndarray:
    return np.linalg.solve(self.factor.T, np.linalg.solve(self.factor, rhs))

  def solve(self, a: np.ndarray) -> np.ndarray:
    if self.direct:
      return self._cho_solve(a)
    return (a - self.b.T @ self._cho_solve(self.b @ a)) / self.damping


def first_order_gains(ctx: RoundContext, damping: float) -> np.ndarray:
  """gain(z) per training row (see the module docstring), before any -inf."""
  num_classes = len(ctx.spec.label_names)
  labels = np.asarray(ctx.train["label"])
  others = (1 - labels if num_classes == 2
            else gradient_vote.most_likely_other(ctx.train_logits, labels))
  low, high = np.minimum(labels, others), np.maximum(labels, others)
  rows = np.arange(len(labels))
  u = margin_gradients(ctx, ctx.train, low, high)
  q = _sigmoid(ctx.train_logits[rows, high] - ctx.train_logits[rows, low])
  solver = GaussNewtonSolver(u, q * (1.0 - q), damping)
  sign = np.where(others == high, 1.0, -1.0)
  gains = np.full(len(labels), np.nan)
  for pair in sorted(set(zip(low.tolist(), high.tolist()))):
    in_pair = np.isin(ctx.validation["label"], pair)
    members = (low == pair[0]) & (high == pair[1])
    voters = {k: v[in_pair] for k, v in ctx.validation.items()}
    is_high = voters["label"] == pair[1]
    if is_high.all() or not is_high.any():
      continue  # A needs both classes: the pair's examples stay unscored
    logits = ctx.validation_logits[in_pair]
    grad_a = auc_surrogate_gradient(margin_gradients(ctx, voters, *pair),
                                    logits[:, pair[1]] - logits[:, pair[0]], is_high)
    gains[members] = sign[members] * (u[members] @ solver.solve(grad_a))
  return gains


@register("first_order_gain")
@gin.configurable(denylist=["ctx"])
def first_order_gain_strategy(ctx: RoundContext, damping: float = 10.0) -> np.ndarray:
  """Predicted validation-AUC gain of relabelling each example; suspects: gain > 0."""
  if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not damping > 0:
    raise UserError(f"first_order_gain_strategy.damping = {damping!r}: must be a number > 0")
  gains = first_order_gains(ctx, float(damping))
  return np.where(gains > 0, gains, -np.inf)
