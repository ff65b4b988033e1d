"""`class_vote` / `class_vote_knn`: a class-balanced vote of the clean validation labels in
gradient space.

With two verbalizers and softmax cross-entropy, the loss gradient of an example factors as
g_c(z, y) = -s(y) r_c(z) u_c(z): a sign for the label, the residual 1 - p(y | z), and the
label-free margin gradient u_c(z) = g_c(z, 0) - g_c(z, 1) = d(logit_1 - logit_0)/d(prompt).
So TracIn scores re-weight the loss signal by residuals, which is why they rank much like
`loss`. These strategies keep only the geometry and let every clean validation example
vote, residual or not:

  k(z, x) = sum over checkpoints c of lr_c cos(u_c(z) - m_c, u_c(x) - m_c)
  S_k(z)  = mean of k(z, v) over the validation examples v of class k
            (class_vote_knn: over the `neighbours` most similar of them)
  score   = S_other(z) - S_label(z)

m_c is the mean margin gradient of the validation set at checkpoint c. Without it the vote
sees almost nothing: moving the prompt changes every example's margin alike, so raw margin
gradients share one large direction (mean pairwise cosine 0.52 on the quick insults model)
and every cosine is about the same. The per-class means make both flip directions count
equally however imbalanced the classes are (Nguyen-Duc et al., ACL 2023: class-based
influence). On development seed 1 of `insults_uniform --quick` (one weak round-0 model,
test AUC 0.64; tuning, not a result) the detection AUROC of the round-0 scores was 0.50
uncentred, 0.76 centred (`class_vote`), 0.86 / 0.89 / 0.89 with 5 / 10 / 20 neighbours
(`class_vote_knn` keeps 20), against 0.80 for tracin_opponents and 0.67 for loss.

More than two classes: the margin is taken towards the example's most likely other class o
(the largest logit but its label y's, at the final prompt). Each pair of classes
{a < b} has its own label-free margin gradient u_ab = d(logit_b - logit_a)/d(prompt), its
own centre m_ab, and its voters: the validation examples of classes a and b. A training
example of pair {y, o} is scored S_o - S_y in that pair's space; validation examples of the
other classes do not vote. With two classes every example's pair is {0, 1}: the vote above.
"""
from __future__ import annotations

import dataclasses

import gin
import jax.numpy as jnp
import numpy as np

from gbair_jax.errors import UserError
from gbair_jax.influence import tracin
from gbair_jax.models.classifier import ClassifierSpec
from gbair_jax.recovery.context import RoundContext
from gbair_jax.recovery.registry import register
from gbair_jax.train import batches as batches_lib


# Batch keys naming each row's class pair {low < high}; without them the pair is {0, 1}.
PAIR_KEYS = ("margin_low", "margin_high")


@dataclasses.dataclass(frozen=True)
class MarginLoss:
  """logit_high - logit_low per example (`margin_low` / `margin_high` in the batch, else
  logit_1 - logit_0), in the TracIn engine's loss contract; its gradient is the label-free
  margin gradient u(z). Hashable (a jit static argument) through `spec`."""

  spec: ClassifierSpec

  def __call__(self, prompt, frozen, batch, per_example_prompt=None):
    logits = self.spec.logits(prompt, frozen, batch["tokens"], batch["mask"], per_example_prompt)
    if PAIR_KEYS[0] not in batch:
      return (logits[:, 1] - logits[:, 0]).astype("float32")
    rows = jnp.arange(logits.shape[0])
    return (logits[rows, batch[PAIR_KEYS[1]]] - logits[rows, batch[PAIR_KEYS[0]]]).astype("float32")


def most_likely_other(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """The class with the largest logit other than each row's label (ties: lowest index)."""
  others = np.asarray(logits, np.float64).copy()
  others[np.arange(len(labels)), labels] = -np.inf
  return others.argmax(axis=1)


def class_votes(kernel: np.ndarray, query_labels: np.ndarray, num_classes: int,
                neighbours: int | None = None) -> np.ndarray:
  """S [N, C]: mean kernel value of each training row over the queries of each class, or
  over its `neighbours` largest values there (NaN for a class without queries)."""
  votes = np.full((kernel.shape[0], num_classes), np.nan)
  for k in range(num_classes):
    members = query_labels == k
    if members.any():
      values = kernel[:, members]
      if neighbours is not None and neighbours < values.shape[1]:
        values = np.partition(values, values.shape[1] - neighbours, axis=1)[:, -neighbours:]
      # -inf marks a pair that must not vote (a voter on itself, vote_calibration.py).
      finite = np.isfinite(values)
      votes[:, k] = np.where(finite, values, 0.0).sum(axis=1) / np.maximum(finite.sum(axis=1), 1)
      votes[~finite.any(axis=1), k] = np.nan
  return votes


def vote_scores(votes: np.ndarray, labels: np.ndarray,
                others: np.ndarray | None = None) -> np.ndarray:
  """S_other - S_label per row (`others` default: the other of two classes); -inf where a
  class had no voter."""
  rows = np.arange(len(labels))
  others = 1 - labels if others is None else others
  score = votes[rows, others] - votes[rows, labels]
  return np.where(np.isfinite(score), score, -np.inf)


def unit_rows(x: np.ndarray) -> np.ndarray:
  """Each row divided by its L2 norm (rows of zeros stay zero)."""
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-30)


def pair_batches(ctx: RoundContext, arrays: dict[str, np.ndarray], low, high):
  """Batches of `arrays` as TracIn scores them (shortest first, padding trimmed), with each
  row's class pair as batch keys (`low` / `high` arrays, or scalars for every row)."""
  num = len(arrays["label"])
  arrays = {**arrays, PAIR_KEYS[0]: np.broadcast_to(np.asarray(low, np.int32), (num,)),
            PAIR_KEYS[1]: np.broadcast_to(np.asarray(high, np.int32), (num,))}
  return batches_lib.iterate_batches(arrays, ctx.batch_size, batches_lib.length_order(arrays),
                                     keys=batches_lib.MODEL_KEYS + PAIR_KEYS,
                                     trim_multiple=batches_lib.TRIM_MULTIPLE)


@dataclasses.dataclass(frozen=True)
class Vote:
  """The vote on the training set, and the same vote on the clean voters themselves.

  scores:  S_other - S_label per training row (-inf where a class had no voter);
  others:  each row's other class (the pair it was scored in);
  voter_scores: per (label a, other b), two samples of scores from the validation voters of
           the pair {a, b}, each voter leaving itself out of its class's vote: `clean` are
           the a-voters scored at their own label a (what a right label a scores), `flipped`
           the b-voters scored as if labelled a (what a wrong label a scores). The score is
           antisymmetric in the label, so one leave-one-out vote per voter gives both.
  """

  scores: np.ndarray
  others: np.ndarray
  voter_scores: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]


def class_vote_scores(ctx: RoundContext, neighbours: int | None, center: bool) -> np.ndarray:
  """S_other - S_label for every training example (see the module docstring)."""
  return class_vote(ctx, neighbours, center).scores


def class_vote(ctx: RoundContext, neighbours: int | None, center: bool,
               binding: str = "class_vote_knn_strategy.neighbours") -> Vote:
  """The vote on the training set and on the voters (see `Vote`); `binding` names the gin
  parameter `neighbours` came from, for the error.

  One streamed pass over the training set: each class pair's validation margin gradients
  are held ([checkpoints, M_pair, P x D] for each pair some training example needs; one pair
  for two classes), each training batch's are centred, normalised and voted at once. With several processes every
  process scores the whole training set.
  """
  if neighbours is not None and (isinstance(neighbours, bool) or not isinstance(neighbours, int)
                                 or neighbours < 1):
    raise UserError(f"{binding} = {neighbours!r}: must be an integer >= 1")
  num_classes = len(ctx.spec.label_names)
  loss = MarginLoss(ctx.spec)
  labels = np.asarray(ctx.train["label"])
  others = (1 - labels if num_classes == 2
            else most_likely_other(ctx.train_logits, labels))
  low, high = np.minimum(labels, others), np.maximum(labels, others)
  label_of = dict(zip(ctx.validation["example_id"].tolist(), ctx.validation["label"].tolist()))
  rates = np.array([lr for _, lr in ctx.checkpoints], np.float64)
  voters, means, voter_labels, voter_scores = {}, {}, {}, {}
  for pair in sorted(set(zip(low.tolist(), high.tolist()))):
    # The pair's voters: the validation examples of its two classes (all of them for C = 2).
    in_pair = np.isin(ctx.validation["label"], pair)
    if not in_pair.any():
      continue  # no voter: the pair's examples score -inf
    pair_validation = {k: v[in_pair] for k, v in ctx.validation.items()}
    queries = tracin.query_gradients(loss, ctx.checkpoints, ctx.frozen,
                                     pair_batches(ctx, pair_validation, *pair))
    voter_labels[pair] = np.array([label_of[int(i)] for i in queries.example_ids])
    features = queries.features.astype(np.float64)                    # [C, M, k]
    means[pair] = (features.mean(axis=1, keepdims=True) if center
                   else np.zeros_like(features[:, :1]))
    voters[pair] = unit_rows(features - means[pair])
    voter_scores.update(_voters_left_out(voters[pair], voter_labels[pair], pair, rates,
                                         num_classes, neighbours))
  position = {int(i): n for n, i in enumerate(ctx.train["example_id"])}
  rows_of, own_votes = [], []
  for batch in pair_batches(ctx, ctx.train, low, high):
    valid = np.asarray(batch["valid"], bool)
    if not valid.any():
      continue
    own = tracin.query_gradients(loss, ctx.checkpoints, ctx.frozen, [batch])
    rows = np.array([position[int(i)] for i in own.example_ids], np.int64)
    votes = np.full((len(rows), num_classes), np.nan)
    for pair in set(zip(low[rows].tolist(), high[rows].tolist())) & set(voters):
      members = (low[rows] == pair[0]) & (high[rows] == pair[1])
      features = unit_rows(own.features[:, members].astype(np.float64) - means[pair])  # [C, b, k]
      kernel = np.einsum("c,cbk,cmk->bm", rates, features, voters[pair])
      votes[members] = class_votes(kernel, voter_labels[pair], num_classes, neighbours)
    rows_of.append(rows)
    own_votes.append(votes)
  votes = np.full((len(labels), num_classes), np.nan)
  votes[np.concatenate(rows_of)] = np.concatenate(own_votes)
  return Vote(vote_scores(votes, labels, others), others, voter_scores)


def _voters_left_out(voters: np.ndarray, labels: np.ndarray, pair: tuple[int, int],
                     rates: np.ndarray, num_classes: int, neighbours: int | None):
  """`Vote.voter_scores` of one pair: every voter voted on by the others (itself excluded)."""
  kernel = np.einsum("c,cmk,cnk->mn", rates, voters, voters)
  np.fill_diagonal(kernel, -np.inf)
  return voter_samples(class_votes(kernel, labels, num_classes, neighbours), labels, [pair])


def voter_samples(votes: np.ndarray, labels: np.ndarray, pairs) -> dict:
  """`Vote.voter_scores` for the class `pairs`, from the voters' own leave-one-out class
  votes [M, C] and their labels [M]."""
  samples = {}
  for pair in pairs:
    for a, b in (pair, pair[::-1]):
      as_label_a = votes[:, b] - votes[:, a]          # each voter's score if it were labelled a
      clean, flipped = as_label_a[labels == a], as_label_a[labels == b]
      samples[(a, b)] = (clean[np.isfinite(clean)], flipped[np.isfinite(flipped)])
  return samples


@register("class_vote")
@gin.configurable(denylist=["ctx"])
def class_vote_strategy(ctx: RoundContext, center: bool = True) -> np.ndarray:
  """Class-balanced clean-label vote over every validation example, in centred
  margin-gradient space."""
  return class_vote_scores(ctx, None, center)


@register("class_vote_knn")
@gin.configurable(denylist=["ctx"])
def class_vote_knn_strategy(ctx: RoundContext, neighbours: int = 20,
                            center: bool = True) -> np.ndarray:
  """The same vote over each class's `neighbours` most similar validation examples."""
  return class_vote_scores(ctx, neighbours, center)
