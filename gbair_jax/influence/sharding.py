"""Data parallelism for the influence engine: a `data` mesh axis, sharded batches, shard_map.

Training examples are split over `data`; the prompt, frozen weights and query gradients are
replicated. Works the same on one host and on many (the mesh then spans every process).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from gbair_jax.influence import per_example_grads as grads_lib

DATA_AXIS = "data"


def make_data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process) named `data`.

  Auto axis types: with JAX's default (Explicit), row-sharded `a @ b.T` raises and
  eager indexing fails (ASSETS.md traps 1-2).
  """
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


def vary(x: jax.Array) -> jax.Array:
  """Marks a replicated shard_map input as per-device, so gradients w.r.t. it stay local.

  Inside `jax.shard_map` (check_vma=True) the gradient w.r.t. a replicated input
  (in_specs=P()) is psum'd across devices: every "per-example" gradient would silently
  become the sum over devices of the examples in the same row (ASSETS.md trap 4).
  """
  return jax.lax.pcast(x, DATA_AXIS, to="varying")


def local_device_count(mesh: Mesh) -> int:
  """How many of the mesh's devices belong to this process: local batches split over them."""
  return sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())


def shard_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows of a batch -> global arrays sharded over `data`.

  With several processes the global batch is the concatenation of every process's local
  batch, in process order.
  """
  sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
  local_devices = local_device_count(mesh)
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.shape[0] % local_devices:
      raise ValueError(f"batch size {value.shape[0]} (field {key!r}) is not divisible by the "
                       f"{local_devices} local devices of the `data` mesh axis")
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Copies a pytree of arrays (the same on every process) to every device of `mesh`."""
  sharding = NamedSharding(mesh, PartitionSpec())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def one(x):
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(one, tree)


def host_value(x: jax.Array) -> np.ndarray:
  """A replicated (or single-device) array's value on this host, multi-process safe."""
  # A copy: a zero-copy view would pin the device buffer (and its allocator overhead).
  return np.array(x.addressable_data(0), copy=True)


@functools.partial(jax.jit, static_argnames=("loss_fn", "mesh", "method"))
def _sharded_per_example_grads(loss_fn, prompt, frozen, batch, mesh, method):

  def per_shard(prompt, frozen, batch):
    return grads_lib.per_example_grads_unjitted(loss_fn, vary(prompt), frozen, batch, method)

  spec = PartitionSpec
  return jax.shard_map(per_shard, mesh=mesh, in_specs=(spec(), spec(), spec(DATA_AXIS)),
                       out_specs=spec(DATA_AXIS))(prompt, frozen, batch)


def sharded_per_example_grads(loss_fn: grads_lib.LossFn, prompt: jax.Array, frozen: Any,
                              batch: dict[str, Any], mesh: Mesh,
                              method: str = grads_lib.DEFAULT_METHOD) -> jax.Array:
  """`per_example_grads` with the batch split over the mesh's `data` axis: [B, P * D].

  `batch` holds this process's rows; the result is a global array sharded over `data`.
  """
  batch = shard_batch(grads_lib.device_batch(batch), mesh)
  prompt, frozen = replicate((prompt, frozen), mesh)
  return _sharded_per_example_grads(loss_fn, prompt, frozen, batch, mesh, method)
