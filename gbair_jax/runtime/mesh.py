"""The one device mesh of an experiment, `(data, model)`, and where arrays go on it.

Batches are split over `data`; the prompt and optimizer state are replicated; frozen
weights are replicated, or split over `model` by T5X-style logical-axis rules (parameter
path -> logical axes -> mesh axes). The same code runs on one host and on many: every
process feeds its own rows of each global batch, and no array is ever pulled whole to a host.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

from absl import logging
import flax.traverse_util
import gin
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from gbair_jax.errors import UserError

Params = Any
DATA_AXIS = "data"
MODEL_AXIS = "model"

# (regex searched in the "/"-joined parameter path, logical name of each dimension);
# the first match wins. Names are T5X's, so rules written for T5X read the same here.
T5_LOGICAL_AXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"token_embedder/embedding$", ("vocab", "embed")),
    (r"attention/(query|key|value)/kernel$", ("embed", "joined_kv")),
    (r"attention/out/kernel$", ("joined_kv", "embed")),
    (r"mlp/wi(_\d+)?/kernel$", ("embed", "mlp")),
    (r"mlp/wo/kernel$", ("mlp", "embed")),
    (r"relpos_bias/rel_embedding$", ("heads", "relpos_buckets")),
    (r"logits_dense/kernel$", ("embed", "vocab")),
    (r"/scale$", ("embed",)),
)


# --------------------------------------------------------------------------- the mesh

@gin.configurable(module="partitioning")
def make_mesh(model_parallelism: int = 1, data_parallelism: int = -1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'model') mesh over `devices` (default: every device of every process).

  `data_parallelism=-1` takes all devices not used for model parallelism. Axes are
  `AxisType.Auto`: JAX 0.10's default Explicit axes reject ordinary ops on mixed
  shardings (a row-sharded `a @ b.T`, eager indexing), and a model written for GSPMD
  propagation (as T5X's) expects Auto.

  Raises:
    UserError: the mesh shape does not fit the devices (names the gin binding).
  """
  devices = list(jax.devices() if devices is None else devices)
  binding = "partitioning.make_mesh"
  if model_parallelism < 1:
    raise UserError(f"{binding}.model_parallelism must be >= 1, got {model_parallelism}")
  if data_parallelism == -1:
    if len(devices) % model_parallelism:
      raise UserError(f"{binding}.model_parallelism={model_parallelism} does not divide the "
                      f"{len(devices)} devices")
    data_parallelism = len(devices) // model_parallelism
  if data_parallelism * model_parallelism != len(devices):
    raise UserError(f"{binding}: mesh {data_parallelism}x{model_parallelism} (data x model) "
                    f"needs {data_parallelism * model_parallelism} devices, there are "
                    f"{len(devices)}")
  return jax.make_mesh((data_parallelism, model_parallelism), (DATA_AXIS, MODEL_AXIS),
                       axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def single_device_mesh(device: jax.Device | None = None) -> Mesh:
  """A 1x1 mesh: what "no parallelism" means to code that always takes a mesh."""
  return make_mesh(1, 1, [device or jax.local_devices()[0]])


def data_size(mesh: Mesh) -> int:
  return int(mesh.shape[DATA_AXIS])


def describe(mesh: Mesh) -> dict:
  """What ran, for metrics.json and the report: mesh shape, device kind, process count."""
  return {"mesh": {DATA_AXIS: data_size(mesh), MODEL_AXIS: int(mesh.shape[MODEL_AXIS])},
          "device_kind": str(mesh.devices.flat[0].device_kind),
          "num_processes": int(jax.process_count())}


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def vary(x: jax.Array) -> jax.Array:
  """Marks a replicated shard_map input as per-device, so gradients w.r.t. it stay local.

  Inside `jax.shard_map` (check_vma=True) the gradient w.r.t. a replicated input
  (in_specs=P()) is psum'd across devices: every "per-example" gradient would silently
  become the sum over devices of the examples in the same row, with no error
  (tests/test_influence_sharding.py pins it).
  """
  return jax.lax.pcast(x, DATA_AXIS, to="varying")


# ------------------------------------------------------------------ putting arrays on it

def put(tree: Any, shardings: Any) -> Any:
  """Places every leaf of `tree` as `shardings` says (one Sharding, or a tree of them).

  Host values (numpy, the same on every process) go up slice by slice: each process
  copies only the shards its own devices hold. A leaf already placed so is kept as is; a
  leaf spread over other processes' devices is resharded on the devices (every process
  must call this, in step), never fetched to a host.
  """
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)
  return jax.tree.map(_put_one, tree, shardings)


def _put_one(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
  if isinstance(x, jax.Array):
    if x.sharding.is_equivalent_to(sharding, x.ndim):
      return x
    if not x.is_fully_addressable:
      return jax.jit(lambda v: v, out_shardings=sharding)(x)
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
  host = np.asarray(x)
  if jax.process_count() == 1:
    return jax.device_put(host, sharding)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Copies a pytree (host values the same on every process, or arrays) to every device."""
  return put(tree, replicated(mesh))


def place_frozen(frozen: Params, mesh: Mesh, partition: bool = False,
                 rules: dict[str, str | None] | None = None,
                 table: Sequence[tuple[str, tuple[str, ...]]] = T5_LOGICAL_AXES) -> Params:
  """Frozen weights on the mesh: replicated, or (`partition`) split as the rules say."""
  if not partition:
    return replicate(frozen, mesh)
  return put(frozen, param_shardings(frozen, mesh, rules, table))


def on_mesh(tree: Any, mesh: Mesh) -> Any:
  """`tree` with every leaf on `mesh`: leaves already placed on it (replicated or
  partitioned) stay as they are, anything else is replicated. Cheap to call again."""

  def one(x):
    if (isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding)
        and x.sharding.mesh == mesh):
      return x
    return _put_one(x, replicated(mesh))

  return jax.tree.map(one, tree)


def process_rows(mesh: Mesh, global_rows: int) -> slice:
  """The rows of a global batch (split over `data`) that this process's devices hold."""
  indices = batch_sharding(mesh).addressable_devices_indices_map((global_rows,))
  spans = sorted({(index[0].start or 0, global_rows if index[0].stop is None
                   else index[0].stop) for index in indices.values()})
  start, stop = spans[0][0], spans[-1][1]
  if sum(b - a for a, b in spans) != stop - start:
    raise ValueError(f"this process's devices hold non-contiguous rows {spans} of the batch: "
                     "build the mesh with jax.make_mesh's device order")
  return slice(start, stop)


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """A global batch (host arrays, the same on every process) -> arrays split over `data`.

  Each process feeds only its own rows (`jax.make_array_from_process_local_data`). A batch
  size that `data` does not divide is padded with rows marked invalid (`valid` False), which
  every consumer masks out; a batch without a `valid` field cannot be padded and is refused.
  A batch already split so (an earlier call's result) is returned as it is.
  """
  sharding = batch_sharding(mesh)
  if all(isinstance(value, jax.Array) and value.sharding.is_equivalent_to(sharding, value.ndim)
         for value in batch.values()):
    return dict(batch)
  batch = {key: np.asarray(value) for key, value in batch.items()}
  rows = len(next(iter(batch.values())))
  parts = data_size(mesh)
  padded = -(-rows // parts) * parts
  if padded != rows:
    if "valid" not in batch:
      raise ValueError(f"batch size {rows} does not split over the {parts}-way `data` mesh "
                       "axis and the batch has no `valid` field to pad it with")
    batch = {key: np.concatenate([value, np.repeat(value[:1], padded - rows, axis=0)])
             for key, value in batch.items()}
    batch["valid"][rows:] = False
  local = process_rows(mesh, padded)
  return {key: jax.make_array_from_process_local_data(sharding, value[local], value.shape)
          for key, value in batch.items()}


def padded_rows(rows: int, mesh: Mesh) -> int:
  """The size `shard_batch` gives a batch of `rows` rows."""
  return -(-rows // data_size(mesh)) * data_size(mesh)


def host_value(x: jax.Array) -> np.ndarray:
  """A replicated (or single-device) array's value on this host, multi-process safe."""
  if not isinstance(x, jax.Array):
    return np.asarray(x)
  # A copy: a zero-copy view would pin the device buffer (and its allocator overhead).
  return np.array(x.addressable_data(0), copy=True)


def host_tree(tree: Any) -> Any:
  """`host_value` of every leaf of a replicated pytree (prompt, optimizer state)."""
  return jax.tree.map(host_value, tree)


# ------------------------------------------------------------- T5X-style partitioning rules

def standard_rules(parameter_partitioning_dims: int = 1) -> dict[str, str | None]:
  """Logical axis -> mesh axis, as T5X's `standard_logical_axis_rules`.

  1: model parallelism only: the vocabulary (embedding table and output layer), MLP
  hidden units and attention heads are split over 'model'; d_model stays whole, so
  every layer needs one all-reduce over 'model' and nothing over 'data'.
  2: additionally split d_model over 'data' (T5X's 2-D parameter partitioning), for
  models whose weights do not fit even when divided by the 'model' axis.
  """
  if parameter_partitioning_dims not in (1, 2):
    raise ValueError("parameter_partitioning_dims must be 1 or 2, got "
                     f"{parameter_partitioning_dims}")
  return {"vocab": MODEL_AXIS, "mlp": MODEL_AXIS, "heads": MODEL_AXIS, "joined_kv": MODEL_AXIS,
          "kv": None, "relpos_buckets": None,
          "embed": DATA_AXIS if parameter_partitioning_dims == 2 else None}


def logical_axes(params: Params, table: Sequence[tuple[str, tuple[str, ...]]] = T5_LOGICAL_AXES
                 ) -> Params:
  """The logical axis names of every parameter; unknown paths are an error, not replicated.

  An unmatched parameter would silently sit whole on every device: with an 11B model
  that is an out-of-memory far from its cause, so it fails here instead.
  """
  compiled = [(re.compile(pattern), axes) for pattern, axes in table]
  flat = flax.traverse_util.flatten_dict(params)
  named = {}
  for key, value in flat.items():
    path = "/".join(key)
    axes = next((axes for pattern, axes in compiled if pattern.search(path)), None)
    if axes is None:
      raise ValueError(f"no sharding rule matches parameter {path}")
    if len(axes) != len(value.shape):
      raise ValueError(f"rule for {path} names {len(axes)} axes, the array has shape {value.shape}")
    named[key] = axes
  return flax.traverse_util.unflatten_dict(named)


def partition_specs(params: Params, mesh: Mesh | None = None,
                    rules: dict[str, str | None] | None = None,
                    table: Sequence[tuple[str, tuple[str, ...]]] = T5_LOGICAL_AXES) -> Params:
  """A PartitionSpec per parameter (arrays or ShapeDtypeStructs).

  With a mesh, a dimension the mesh axis does not divide evenly (a 6-head T5 Small on a
  4-way 'model' axis) is left whole rather than failing the placement.
  """
  rules = standard_rules() if rules is None else rules
  flat_axes = flax.traverse_util.flatten_dict(logical_axes(params, table),
                                              is_leaf=lambda _, v: isinstance(v, tuple))
  flat_params = flax.traverse_util.flatten_dict(params)
  specs = {}
  for key, axes in flat_axes.items():
    shape = flat_params[key].shape
    mesh_axes = []
    for size, logical in zip(shape, axes):
      mesh_axis = rules.get(logical)
      if mesh_axis is not None and mesh is not None and size % mesh.shape[mesh_axis]:
        logging.warning("%s: dimension %s (%d) does not divide over mesh axis %r (%d); "
                        "kept whole", "/".join(key), logical, size, mesh_axis,
                        mesh.shape[mesh_axis])
        mesh_axis = None
      mesh_axes.append(mesh_axis)
    specs[key] = PartitionSpec(*mesh_axes)
  return flax.traverse_util.unflatten_dict(specs)


def param_shardings(params: Params, mesh: Mesh, rules: dict[str, str | None] | None = None,
                    table: Sequence[tuple[str, tuple[str, ...]]] = T5_LOGICAL_AXES) -> Params:
  """A NamedSharding per parameter: what `load_t5x_params(shardings=...)` reads onto."""
  specs = partition_specs(params, mesh, rules, table)
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def place_params(params: Params, mesh: Mesh, rules: dict[str, str | None] | None = None,
                 table: Sequence[tuple[str, tuple[str, ...]]] = T5_LOGICAL_AXES) -> Params:
  """Puts every parameter on the mesh, split as the rules say (replicated over 'data')."""
  return place_frozen(params, mesh, True, rules, table)


def bytes_per_device(params: Params, mesh: Mesh, rules: dict[str, str | None] | None = None,
                     table: Sequence[tuple[str, tuple[str, ...]]] = T5_LOGICAL_AXES) -> int:
  """Weight bytes each device holds under the rules: to size a mesh before loading."""
  specs = flax.traverse_util.flatten_dict(partition_specs(params, mesh, rules, table),
                                          is_leaf=lambda _, v: isinstance(v, PartitionSpec))
  total = 0
  for key, value in flax.traverse_util.flatten_dict(params).items():
    split = math.prod(mesh.shape[axis] for axis in specs[key] if axis is not None)
    total += math.prod(value.shape) * jax.numpy.dtype(value.dtype).itemsize // split
  return total
