"""TracInCP between a streamed training set and a small query set, summed over checkpoints.

TracInCP(z, z') = sum_c lr_c <g_c(z), g_c(z')>. Query gradients for every checkpoint are
held (C x M x k); the training set is streamed batch by batch and reduced on the fly
(top-k per query, per-example aggregates), so memory stays flat in N unless the full
[N, M] matrix is asked for. Both streams run on a ('data', 'model') mesh (runtime/mesh.py):
each global batch split over `data`, frozen weights wherever they were placed.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import Mesh, PartitionSpec

from gbair_jax.errors import UserError
from gbair_jax.influence import per_example_grads as grads_lib
from gbair_jax.influence.projection import RandomProjection
from gbair_jax.runtime import mesh as mesh_lib

# A checkpoint is (prompt [P, D], learning rate used in its epoch).
Checkpoint = tuple[Any, float]


@dataclasses.dataclass(frozen=True)
class GradientOptions:
  """How per-checkpoint gradients become the vectors whose dot products are scores.

  Attributes:
    method: per-example gradient kernel, "copies" or "vmap" (see per_example_grads).
    normalize: unit-normalise each checkpoint's gradient (cosine TracIn), so that a few
      large-norm examples do not top every query's list; applied after any projection.
    projection: project each checkpoint's gradient to `projection.dim` dims (same map for
      all checkpoints), for prompts too large to hold M x d query gradients.
  """

  method: str = grads_lib.DEFAULT_METHOD
  normalize: bool = False
  projection: RandomProjection | None = None


@dataclasses.dataclass
class QueryGradients:
  """The query set's gradient features for every checkpoint."""

  example_ids: np.ndarray  # [M] int64
  features: np.ndarray  # [C, M, k] float32


@dataclasses.dataclass
class TracInResult:
  """Streamed TracIn reductions; per-example arrays follow the stream order of valid rows.

  Opponent lists run from the most negative score up, proponent lists from the most
  positive down; they hold min(top_k, N) entries per query.
  """

  example_ids: np.ndarray  # [N] int64
  self_influence: np.ndarray  # [N] sum_c lr_c |g_c(z)|^2, from raw (exact) gradients
  negative_influence: np.ndarray  # [N] sum over queries of min(score, 0)
  mean_influence: np.ndarray  # [N] mean over queries of score
  opponent_count: np.ndarray  # [N] queries whose opponent list holds z with a score < 0
  query_ids: np.ndarray  # [M] int64
  opponent_ids: np.ndarray  # [M, k] int64
  opponent_scores: np.ndarray  # [M, k]
  proponent_ids: np.ndarray  # [M, k] int64
  proponent_scores: np.ndarray  # [M, k]
  scores: np.ndarray | None = None  # [N, M] when asked for


def _stack_checkpoints(checkpoints: Sequence[Checkpoint]) -> tuple[np.ndarray, np.ndarray]:
  if not checkpoints:
    raise UserError("TracIn needs at least one checkpoint, got none")
  prompts = [np.asarray(prompt, np.float32) for prompt, _ in checkpoints]
  if len({p.shape for p in prompts}) != 1:
    raise UserError(f"checkpoint prompts differ in shape: {sorted({p.shape for p in prompts})}")
  learning_rates = np.asarray([float(lr) for _, lr in checkpoints], np.float32)
  return np.stack(prompts), learning_rates


def _features(loss_fn, prompt, frozen, batch, options: GradientOptions, matrix):
  """Score features [B, k] of one checkpoint and the raw squared gradient norms [B]."""
  grads = grads_lib.per_example_grads_unjitted(loss_fn, prompt, frozen, batch, options.method)
  squared_norms = jnp.sum(grads * grads, axis=1)
  if options.projection is not None:
    grads = options.projection.project(grads, matrix)
  if options.normalize:
    norms = jnp.linalg.norm(grads, axis=1, keepdims=True)
    # Zero (padded) rows stay zero instead of becoming NaN.
    grads = grads / jnp.maximum(norms, jnp.finfo(jnp.float32).tiny)
  return grads, squared_norms


def _projection_matrix(options: GradientOptions, input_dim: int) -> jax.Array | None:
  projection = options.projection
  if projection is None or not projection.fits_in_memory(input_dim):
    return None
  return projection.matrix(input_dim)


def _batch_ids(batch: dict[str, Any]) -> np.ndarray:
  for key in ("example_id", "valid"):
    if key not in batch:
      raise UserError(f"TracIn batches need an {key!r} field; got fields {sorted(batch)}")
  return np.asarray(batch["example_id"], np.int64)


@functools.partial(jax.jit, static_argnames=("loss_fn", "options", "mesh"))
def _query_step(prompts, frozen, matrix, batch, *, loss_fn, options, mesh):
  """Features [C, B, k] of one query batch at every checkpoint, replicated."""

  def per_shard(prompts, frozen, matrix, batch):
    def one(prompt):  # the trap fix: gradients w.r.t. the replicated prompt stay per-device
      return _features(loss_fn, mesh_lib.vary(prompt), frozen, batch, options, matrix)[0]
    return jax.lax.map(one, prompts)

  replicated, split = PartitionSpec(), PartitionSpec(mesh_lib.DATA_AXIS)
  features = jax.shard_map(per_shard, mesh=mesh, axis_names={mesh_lib.DATA_AXIS},
                           in_specs=(replicated,) * 3 + (split,),
                           out_specs=PartitionSpec(None, mesh_lib.DATA_AXIS))(
                               prompts, frozen, matrix, batch)
  return jax.lax.with_sharding_constraint(features, mesh_lib.replicated(mesh))


def _default_mesh(mesh: Mesh | None) -> Mesh:
  return mesh if mesh is not None else mesh_lib.single_device_mesh()


def query_gradients(loss_fn: grads_lib.LossFn, checkpoints: Sequence[Checkpoint], frozen: Any,
                    query_batches: Iterable[dict[str, Any]],
                    options: GradientOptions = GradientOptions(),
                    mesh: Mesh | None = None) -> QueryGradients:
  """Gradient features of the valid query rows for every checkpoint: [C, M, k].

  Query batches are global batches, split over the mesh's `data` axis like training ones.
  """
  mesh = _default_mesh(mesh)
  prompts, _ = _stack_checkpoints(checkpoints)
  matrix = _projection_matrix(options, prompts[0].size)
  # Once, not once per checkpoint and batch.
  prompts, matrix = mesh_lib.replicate((prompts, matrix), mesh)
  frozen = mesh_lib.on_mesh(frozen, mesh)
  ids, features = [], []
  for batch in query_batches:
    valid = np.asarray(batch["valid"], bool)
    ids.append(_batch_ids(batch)[valid])
    on_device = mesh_lib.shard_batch(grads_lib.device_batch(batch), mesh)
    batch_features = _query_step(prompts, frozen, matrix, on_device, loss_fn=loss_fn,
                                 options=options, mesh=mesh)
    features.append(mesh_lib.host_value(batch_features)[:, :len(valid)][:, valid])
  if not ids:
    raise UserError("TracIn needs at least one query batch, got none")
  return QueryGradients(np.concatenate(ids), np.concatenate(features, axis=1))


def _score_batch(loss_fn, options, prompts, learning_rates, queries, frozen, matrix, batch,
                 vary):
  """Scores [B, M] and self-influence [B] of one batch, looping over checkpoints inside."""
  batch_size, num_queries = batch["valid"].shape[0], queries.shape[1]
  # Under shard_map the carry must be per-device like the values added to it.
  init = (vary(jnp.zeros((batch_size, num_queries), jnp.float32)),
          vary(jnp.zeros((batch_size,), jnp.float32)))

  def add_checkpoint(carry, checkpoint):
    scores, self_influence = carry
    prompt, learning_rate, query = checkpoint
    features, squared_norms = _features(loss_fn, prompt, frozen, batch, options, matrix)
    return (scores + learning_rate * features @ query.T,
            self_influence + learning_rate * squared_norms), None

  (scores, self_influence), _ = jax.lax.scan(add_checkpoint, init,
                                             (prompts, learning_rates, queries))
  return scores, self_influence


def _merge_top_k(best_scores, best_positions, scores, positions, valid, largest: bool):
  """Running top-k per query: the best of the kept k and this batch's rows."""
  sentinel = -jnp.inf if largest else jnp.inf
  candidates = jnp.where(valid[None, :], scores.T, sentinel)
  all_scores = jnp.concatenate([best_scores, candidates], axis=1)
  all_positions = jnp.concatenate(
      [best_positions, jnp.broadcast_to(positions, candidates.shape)], axis=1)
  _, index = jax.lax.top_k(all_scores if largest else -all_scores, best_scores.shape[1])
  return (jnp.take_along_axis(all_scores, index, axis=1),
          jnp.take_along_axis(all_positions, index, axis=1))


@functools.partial(jax.jit, static_argnames=("loss_fn", "options", "mesh", "keep_scores"))
def _step(state, prompts, learning_rates, queries, frozen, matrix, batch, id_words, offset, *,
          loss_fn, options, mesh, keep_scores):
  """Scores one training batch and folds it into the running reductions."""

  def per_shard(prompts, learning_rates, queries, frozen, matrix, batch):
    # The trap fix: gradients w.r.t. the replicated prompts must stay per-device.
    return _score_batch(loss_fn, options, mesh_lib.vary(prompts), learning_rates,
                        queries, frozen, matrix, batch, vary=mesh_lib.vary)

  # Only `data` is manual: frozen weights split over `model` stay split (GSPMD inside).
  replicated, split = PartitionSpec(), PartitionSpec(mesh_lib.DATA_AXIS)
  scores, self_influence = jax.shard_map(
      per_shard, mesh=mesh, axis_names={mesh_lib.DATA_AXIS},
      in_specs=(replicated,) * 5 + (split,), out_specs=(split, split))(
          prompts, learning_rates, queries, frozen, matrix, batch)

  valid = batch["valid"]
  positions = offset + jnp.arange(valid.shape[0], dtype=jnp.int32)
  opponents = _merge_top_k(state["opponent_scores"], state["opponent_positions"], scores,
                           positions, valid, largest=False)
  proponents = _merge_top_k(state["proponent_scores"], state["proponent_positions"], scores,
                            positions, valid, largest=True)
  state = dict(opponent_scores=opponents[0], opponent_positions=opponents[1],
               proponent_scores=proponents[0], proponent_positions=proponents[1])
  per_example = dict(self_influence=self_influence,
                     negative_influence=jnp.sum(jnp.minimum(scores, 0.0), axis=1),
                     mean_influence=jnp.mean(scores, axis=1), valid=valid, id_words=id_words)
  if keep_scores:
    per_example["scores"] = scores
  # Every host reads the whole result: replicate the small per-batch outputs.
  everywhere = mesh_lib.replicated(mesh)
  per_example = jax.lax.with_sharding_constraint(per_example, everywhere)
  state = jax.lax.with_sharding_constraint(state, everywhere)
  return state, per_example


def _id_words(example_ids: np.ndarray) -> np.ndarray:
  """int64 ids as int32 pairs [B, 2]: they cross devices exactly without jax_enable_x64."""
  return np.ascontiguousarray(example_ids, np.int64).view(np.int32).reshape(-1, 2)


def tracin_scores(loss_fn: grads_lib.LossFn, checkpoints: Sequence[Checkpoint], frozen: Any,
                  train_batches: Iterable[dict[str, Any]],
                  query_batches: Iterable[dict[str, Any]] | QueryGradients, *,
                  options: GradientOptions = GradientOptions(), top_k: int = 10,
                  keep_scores: bool = False, mesh: Mesh | None = None,
                  progress: bool = True) -> TracInResult:
  """TracInCP of every training example on every query, streamed over the training set.

  Args:
    loss_fn: per-example losses `(prompt, frozen, batch, per_example_prompt=None) -> [B]`
      at each example's current label; hashable (it is a jit static argument).
    checkpoints: (prompt [P, D], learning rate) per checkpoint.
    frozen: frozen weights (any pytree), passed through jit as an argument.
    train_batches: global training batches (the same on every process), each a dict with
      `example_id` (int64 [B]) and `valid` (bool [B]); read once, in order. Each is split
      over the mesh's `data` axis; every process feeds its own rows.
    query_batches: query batches (same contract), or their `QueryGradients` computed with
      the same checkpoints and options.
    options: gradient kernel, cosine normalisation, random projection.
    top_k: opponents and proponents kept per query.
    keep_scores: also return the full [N, M] matrix (O(N x M) host memory).
    mesh: the ('data', 'model') mesh of the experiment (runtime/mesh.py); default: one
      device. Frozen weights already on it stay where they are (e.g. split over `model`).
    progress: show a tqdm bar over training batches (on process 0).

  Returns:
    A TracInResult, identical on every process.

  With several processes (runtime/process.py), every process passes the same arguments:
  the mesh spans them all, and each feeds only its own rows of every batch.
  """
  if top_k < 1:
    raise UserError(f"top_k must be >= 1, got {top_k}")
  mesh = _default_mesh(mesh)
  frozen = mesh_lib.on_mesh(frozen, mesh)
  prompts, learning_rates = _stack_checkpoints(checkpoints)
  queries = (query_batches if isinstance(query_batches, QueryGradients)
             else query_gradients(loss_fn, checkpoints, frozen, query_batches, options, mesh))
  num_queries = queries.example_ids.shape[0]
  matrix = _projection_matrix(options, prompts[0].size)

  put = lambda tree: mesh_lib.replicate(tree, mesh)
  constants = (*put((prompts, learning_rates, queries.features)), frozen, put(matrix))
  state = put(dict(
      opponent_scores=np.full((num_queries, top_k), np.inf, np.float32),
      opponent_positions=np.full((num_queries, top_k), -1, np.int32),
      proponent_scores=np.full((num_queries, top_k), -np.inf, np.float32),
      proponent_positions=np.full((num_queries, top_k), -1, np.int32)))

  fields = ("self_influence", "negative_influence", "mean_influence", "valid", "id_words")
  fields += ("scores",) if keep_scores else ()
  collected = {name: [] for name in fields}

  def collect(per_example):
    for name in fields:
      collected[name].append(mesh_lib.host_value(per_example[name]))

  total = len(train_batches) if hasattr(train_batches, "__len__") else None
  bar = tqdm.tqdm(total=total, unit="batch", desc="TracIn",
                  disable=not progress or jax.process_index() != 0)
  pending, offset = None, 0
  for batch in train_batches:
    ids = _id_words(_batch_ids(batch))
    on_device = grads_lib.device_batch(batch)
    on_device["id_words"] = ids
    on_device = mesh_lib.shard_batch(on_device, mesh)
    ids = on_device.pop("id_words")
    state, per_example = _step(state, *constants, on_device, ids, np.int32(offset),
                               loss_fn=loss_fn, options=options, mesh=mesh,
                               keep_scores=keep_scores)
    offset += per_example["valid"].shape[0]
    # Fetch the previous batch's results only now, so the device already has the next one.
    if pending is not None:
      collect(pending)
    pending = per_example
    bar.update(1)
  bar.close()
  if pending is not None:
    collect(pending)
  if not collected["valid"]:
    raise UserError("TracIn got no training batches")
  return _finish(collected, mesh_lib.host_tree(state), queries.example_ids,
                 keep_scores)


def _finish(collected, state, query_ids, keep_scores) -> TracInResult:
  """Host-side assembly: positions -> example ids, padded rows dropped."""

  def take(name):
    # Pop each field's batch list as soon as it is joined: peak host memory stays ~1x N.
    return np.concatenate(collected.pop(name))

  valid = take("valid").astype(bool)
  all_ids = np.ascontiguousarray(take("id_words")).view(np.int64).reshape(-1)
  top_k = min(state["opponent_positions"].shape[1], int(valid.sum()))
  opponent_positions = state["opponent_positions"][:, :top_k]
  opponent_scores = state["opponent_scores"][:, :top_k]
  proponent_positions = state["proponent_positions"][:, :top_k]
  negative = opponent_positions[opponent_scores < 0]
  return TracInResult(
      example_ids=all_ids[valid],
      self_influence=take("self_influence")[valid],
      negative_influence=take("negative_influence")[valid],
      mean_influence=take("mean_influence")[valid],
      opponent_count=np.bincount(negative, minlength=valid.shape[0])[valid],
      query_ids=query_ids,
      opponent_ids=all_ids[opponent_positions],
      opponent_scores=opponent_scores,
      proponent_ids=all_ids[proponent_positions],
      proponent_scores=state["proponent_scores"][:, :top_k],
      scores=take("scores")[valid] if keep_scores else None)


def self_influence(loss_fn: grads_lib.LossFn, checkpoints: Sequence[Checkpoint], frozen: Any,
                   train_batches: Iterable[dict[str, Any]], *,
                   method: str = grads_lib.DEFAULT_METHOD, mesh: Mesh | None = None,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """TracIn(z, z) = sum_c lr_c |g_c(z)|^2 of every training example: (example_ids, scores)."""
  prompts, _ = _stack_checkpoints(checkpoints)
  no_queries = QueryGradients(np.zeros((0,), np.int64),
                              np.zeros((prompts.shape[0], 0, prompts[0].size), np.float32))
  result = tracin_scores(loss_fn, checkpoints, frozen, train_batches, no_queries,
                         options=GradientOptions(method=method), top_k=1, mesh=mesh,
                         progress=progress)
  return result.example_ids, result.self_influence
