"""`class_vote_embedding`: the class vote on frozen sentence embeddings, the control for the
vote in gradient space (`class_vote_knn`, recovery/gradient_vote.py).

Does the prompt's gradient space find flipped labels that the backbone's plain sentence
encoder does not? This is the same class-balanced kNN vote, with the features swapped:

  e(x)    the backbone's sentence embedding of the text (all-MiniLM-L6-v2: the mean-pooled,
          L2-normalised output; no prompt, nothing trained), centred on the voters' mean
          and normalised again
  S_k(z)  mean cosine of e(z) to its `neighbours` most similar voters of class k
  score   S_other(z) - S_label(z)      (other: the other class, or for more than two
                                        classes the model's most likely other one)

The features never change, so between rounds the score moves only through the labels.
`voters="validation"` (default) votes with the clean validation examples, as
`class_vote_knn` does; `"validation_and_train"` adds the rest of the training set at its
current, noisy labels (no example votes on itself): kNN label-noise detection over the
whole labelled pool, the variant that needs no clean data at all but the voters' majority.
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
from gbair_jax.train import batches as batches_lib

VOTER_SETS = ("validation", "validation_and_train")
_BLOCK = 1024  # candidate rows per kernel block: memory [block, voters], not [N, voters]


@functools.lru_cache(maxsize=None)
def _embed_fn(module, mesh):
  return jax.jit(lambda frozen, tokens, mask: module.apply(
      {"params": frozen}, tokens, mask, method="sentence_embeddings"),
                 out_shardings=mesh_lib.replicated(mesh))


def sentence_embeddings(ctx: RoundContext, arrays: dict[str, np.ndarray]) -> np.ndarray:
  """[N, D] float64: the frozen backbone's sentence embedding of every row, in row order."""
  module = ctx.spec.backbone.module
  if not hasattr(module, "sentence_embeddings"):
    raise UserError(f"run.strategy='class_vote_embedding' needs a backbone with sentence "
                    f"embeddings (an encoder such as minilm); '{ctx.spec.backbone.name}' has none")
  mesh = ctx.mesh if ctx.mesh is not None else mesh_lib.single_device_mesh()
  embed = _embed_fn(module, mesh)
  frozen = mesh_lib.on_mesh(ctx.frozen, mesh)
  order = batches_lib.length_order(arrays)
  out = []
  for batch in batches_lib.iterate_batches(arrays, ctx.batch_size, order, keys=("tokens", "mask"),
                                           trim_multiple=batches_lib.TRIM_MULTIPLE):
    placed = mesh_lib.shard_batch(batch, mesh)
    rows = mesh_lib.host_value(embed(frozen, placed["tokens"], placed["mask"]))
    out.append(np.asarray(rows, np.float64)[:len(batch["valid"])][batch["valid"]])
  embeddings = np.empty((len(order), out[0].shape[1]), np.float64)
  embeddings[order] = np.concatenate(out)
  return embeddings


def embedding_vote_scores(ctx: RoundContext, neighbours: int | None = 20, center: bool = True,
                          voters: str = "validation") -> np.ndarray:
  """S_other - S_label for every training example (see the module docstring)."""
  if voters not in VOTER_SETS:
    raise UserError(f"class_vote_embedding_strategy.voters='{voters}' is unknown "
                    f"(expected one of {', '.join(VOTER_SETS)})")
  if neighbours is not None and (isinstance(neighbours, bool) or not isinstance(neighbours, int)
                                 or neighbours < 1):
    raise UserError(f"class_vote_embedding_strategy.neighbours = {neighbours!r}: must be an "
                    "integer >= 1")
  labels = np.asarray(ctx.train["label"])
  num, num_classes = len(labels), len(ctx.spec.label_names)
  candidates = sentence_embeddings(ctx, ctx.train)
  voter_features = sentence_embeddings(ctx, ctx.validation)
  voter_labels = np.asarray(ctx.validation["label"])
  with_train = voters == "validation_and_train"
  if with_train:
    voter_features = np.concatenate([voter_features, candidates])
    voter_labels = np.concatenate([voter_labels, labels])
  centre = (voter_features.mean(axis=0, keepdims=True) if center
            else np.zeros_like(voter_features[:1]))
  voter_features = gradient_vote.unit_rows(voter_features - centre)
  candidates = gradient_vote.unit_rows(candidates - centre)
  num_validation = len(ctx.validation["label"])
  votes = np.empty((num, num_classes))
  for start in range(0, num, _BLOCK):
    rows = np.arange(start, min(start + _BLOCK, num))
    kernel = candidates[rows] @ voter_features.T
    if with_train:  # -inf: a training example never votes on itself (class_votes skips it)
      kernel[np.arange(len(rows)), num_validation + rows] = -np.inf
    votes[rows] = gradient_vote.class_votes(kernel, voter_labels, num_classes, neighbours)
  others = (1 - labels if num_classes == 2
            else gradient_vote.most_likely_other(ctx.train_logits, labels))
  return gradient_vote.vote_scores(votes, labels, others)


@register("class_vote_embedding")
@gin.configurable(denylist=["ctx"])
def class_vote_embedding_strategy(ctx: RoundContext, neighbours: int | None = 20,
                                  center: bool = True, voters: str = "validation") -> np.ndarray:
  """The class-balanced kNN vote on frozen sentence embeddings: `class_vote_knn`'s control."""
  return embedding_vote_scores(ctx, neighbours, center, voters)
