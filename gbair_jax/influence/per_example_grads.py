"""The per-example gradient kernel (it lives in train/per_example_grads.py, since the trainer
takes per-example gradients for in-run TracIn and train sits above influence), re-exported,
plus its sharded form: the batch split over the experiment mesh's `data` axis.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
from jax.sharding import Mesh, PartitionSpec

from gbair_jax.runtime import mesh as mesh_lib
from gbair_jax.train.per_example_grads import (  # noqa: F401
    DEFAULT_METHOD, METHODS, Batch, LossFn, device_batch, per_example_grads,
    per_example_grads_unjitted)


@functools.partial(jax.jit, static_argnames=("loss_fn", "mesh", "method"))
def _sharded_per_example_grads(loss_fn, prompt, frozen, batch, mesh, method):

  def per_shard(prompt, frozen, batch):
    return per_example_grads_unjitted(loss_fn, mesh_lib.vary(prompt), frozen, batch, method)

  # Only `data` is manual: frozen weights split over `model` stay split (GSPMD inside).
  return jax.shard_map(per_shard, mesh=mesh, axis_names={mesh_lib.DATA_AXIS},
                       in_specs=(PartitionSpec(), PartitionSpec(),
                                 PartitionSpec(mesh_lib.DATA_AXIS)),
                       out_specs=PartitionSpec(mesh_lib.DATA_AXIS))(prompt, frozen, batch)


def sharded_per_example_grads(loss_fn: LossFn, prompt: jax.Array, frozen: Any, batch: Batch,
                              mesh: Mesh, method: str = DEFAULT_METHOD) -> jax.Array:
  """`per_example_grads` with the global batch split over the mesh's `data` axis.

  Returns [B', P * D] split over `data` (B' = B rounded up to a multiple of the `data`
  size; the padded rows are zero).
  """
  batch = mesh_lib.shard_batch(device_batch(batch), mesh)
  prompt = mesh_lib.replicate(prompt, mesh)
  frozen = mesh_lib.on_mesh(frozen, mesh)
  return _sharded_per_example_grads(loss_fn, prompt, frozen, batch, mesh, method)
