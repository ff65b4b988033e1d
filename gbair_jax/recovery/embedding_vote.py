"""`class_vote_embedding`: the class vote on frozen sentence embeddings, the control for the
vote in gradient space (`class_vote_knn`, recovery/gradient_vote.py).

Does the prompt's gradient space find flipped labels that the backbone's plain sentence
encoder does not? This is the same class-balanced kNN vote, with the features swapped:

  e(x)    the backbone's sentence embedding of the text (all-MiniLM-L6-v2: the mean-pooled,
          L2-normalised output it was trained to give; T5 and the decoders: their last
          hidden states mean-pooled, never trained for similarity; no prompt, nothing
          trained), centred on the voters' mean and normalised again
  S_k(z)  mean cosine of e(z) to its `neighbours` most similar voters of class k
  score   S_other(z) - S_label(z)      (other: the other class, or for more than two
                                        classes the model's most likely other one)

The features never change, so between rounds the score moves only through the labels.
`voters="validation"` (default) votes with the clean validation examples, as
`class_vote_knn` does; `"validation_and_train"` adds the rest of the training set at its
current, noisy labels (no example votes on itself): kNN label-noise detection over the
whole labelled pool, the variant that needs no clean data at all but the voters' majority.
`class_vote_calibrated_strategy.space = "embedding"` calibrates this vote as it does the
gradient one (recovery/vote_calibration.py): the validation voters' leave-one-out scores.
"""
from __future__ import annotations

import functools

import gin
import jax
import numpy as np

from gbair_jax.errors import UserError
from gbair_jax.recovery import gradient_vote
from gbair_jax.recovery.context import RoundContext
from gbair_jax.recovery.registry import register
from gbair_jax.runtime import mesh as mesh_lib
from gbair_jax.train.trainer import predict_logits

VOTER_SETS = ("validation", "validation_and_train")
_BLOCK = 1024  # candidate rows per kernel block: memory [block, voters], not [N, voters]


@functools.lru_cache(maxsize=None)
def _embed_fn(module, mesh):
  """Jitted `(prompt, frozen, tokens, mask) -> [B, D]` in `predict_logits`' calling
  convention (the prompt is unused: nothing is prompted)."""
  return jax.jit(lambda prompt, frozen, tokens, mask: module.apply(
      {"params": frozen}, tokens, mask, method="sentence_embeddings"),
                 out_shardings=mesh_lib.replicated(mesh))


def sentence_embeddings(ctx: RoundContext, arrays: dict[str, np.ndarray]) -> np.ndarray:
  """[N, D] float64: the frozen backbone's sentence embedding of every row, in row order."""
  module = ctx.spec.backbone.module
  if not hasattr(module, "sentence_embeddings"):
    raise UserError(f"run.strategy='class_vote_embedding' needs a backbone with sentence "
                    f"embeddings (a `sentence_embeddings` method); "
                    f"'{ctx.spec.backbone.name}' has none")
  mesh = ctx.mesh if ctx.mesh is not None else mesh_lib.single_device_mesh()
  # predict_logits' batching (shortest first, trimmed padding, split over the mesh).
  return predict_logits(ctx.spec, None, ctx.frozen, arrays, ctx.batch_size,
                        logits_fn=_embed_fn(module, mesh), mesh=mesh).astype(np.float64)


def embedding_vote(ctx: RoundContext, neighbours: int | None = 20, center: bool = True,
                   voters: str = "validation",
                   binding: str = "class_vote_embedding_strategy") -> gradient_vote.Vote:
  """The vote on the training set and on the validation voters (`gradient_vote.Vote`: the
  voters' leave-one-out scores calibrate it); `binding` names the gin configurable the
  settings came from, for the errors."""
  if voters not in VOTER_SETS:
    raise UserError(f"{binding}.voters='{voters}' is unknown "
                    f"(expected one of {', '.join(VOTER_SETS)})")
  if neighbours is not None and (isinstance(neighbours, bool) or not isinstance(neighbours, int)
                                 or neighbours < 1):
    raise UserError(f"{binding}.neighbours = {neighbours!r}: must be an integer >= 1")
  labels = np.asarray(ctx.train["label"])
  num, num_classes = len(labels), len(ctx.spec.label_names)
  candidates = sentence_embeddings(ctx, ctx.train)
  validation = sentence_embeddings(ctx, ctx.validation)
  validation_labels = np.asarray(ctx.validation["label"])
  with_train = voters == "validation_and_train"
  pool = np.concatenate([validation, candidates]) if with_train else validation
  pool_labels = np.concatenate([validation_labels, labels]) if with_train else validation_labels
  centre = pool.mean(axis=0, keepdims=True) if center else np.zeros_like(pool[:1])
  pool = gradient_vote.unit_rows(pool - centre)
  num_validation = len(validation_labels)

  def votes_of(features: np.ndarray, pool_index: np.ndarray) -> np.ndarray:
    """[n, C] class votes of rows whose own place in the pool is `pool_index` (-1: none)."""
    votes = np.empty((len(features), num_classes))
    for start in range(0, len(features), _BLOCK):
      rows = np.arange(start, min(start + _BLOCK, len(features)))
      kernel = features[rows] @ pool.T
      own = pool_index[rows] >= 0  # -inf: nobody votes on itself (class_votes skips it)
      kernel[np.flatnonzero(own), pool_index[rows][own]] = -np.inf
      votes[rows] = gradient_vote.class_votes(kernel, pool_labels, num_classes, neighbours)
    return votes

  train_index = num_validation + np.arange(num) if with_train else np.full(num, -1)
  votes = votes_of(gradient_vote.unit_rows(candidates - centre), train_index)
  others = (1 - labels if num_classes == 2
            else gradient_vote.most_likely_other(ctx.train_logits, labels))
  voter_votes = votes_of(pool[:num_validation], np.arange(num_validation))
  pairs = set(zip(np.minimum(labels, others).tolist(), np.maximum(labels, others).tolist()))
  return gradient_vote.Vote(gradient_vote.vote_scores(votes, labels, others), others,
                            gradient_vote.voter_samples(voter_votes, validation_labels,
                                                        sorted(pairs)))


def embedding_vote_scores(ctx: RoundContext, neighbours: int | None = 20, center: bool = True,
                          voters: str = "validation") -> np.ndarray:
  """S_other - S_label for every training example (see the module docstring)."""
  return embedding_vote(ctx, neighbours, center, voters).scores


@register("class_vote_embedding")
@gin.configurable(denylist=["ctx"])
def class_vote_embedding_strategy(ctx: RoundContext, neighbours: int | None = 20,
                                  center: bool = True, voters: str = "validation") -> np.ndarray:
  """The class-balanced kNN vote on frozen sentence embeddings: `class_vote_knn`'s control."""
  return embedding_vote_scores(ctx, neighbours, center, voters)
