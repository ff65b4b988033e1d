"""Sharding rules that split frozen backbone weights over a ('data', 'model') device mesh.

Parameter paths map to T5X logical axes, logical axes to mesh axes (as T5X's standard
rules: vocabulary, MLP and attention heads on 'model'), and the result places a tree on a mesh.
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

from absl import logging
import flax.traverse_util
import gin
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

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


@gin.configurable(module="partitioning")
def make_mesh(model_parallelism: int = 1, data_parallelism: int = -1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'model') mesh over `devices` (default: all); -1 takes the remaining devices.

  Axes are `AxisType.Auto`: JAX 0.10's default Explicit axes reject ordinary ops on
  mixed shardings (e.g. a row-sharded `a @ b.T`), and a model written for GSPMD
  propagation (as T5X's) expects Auto.
  """
  devices = list(jax.devices() if devices is None else devices)
  if data_parallelism == -1:
    if len(devices) % model_parallelism:
      raise ValueError(f"model_parallelism={model_parallelism} does not divide "
                       f"{len(devices)} devices")
    data_parallelism = len(devices) // model_parallelism
  if data_parallelism * model_parallelism != len(devices):
    raise ValueError(f"mesh {data_parallelism}x{model_parallelism} needs "
                     f"{data_parallelism * model_parallelism} devices, there are {len(devices)}")
  return jax.make_mesh((data_parallelism, model_parallelism), (DATA_AXIS, MODEL_AXIS),
                       axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def param_shardings(params: Params, mesh: Mesh, rules: dict[str, str | None] | None = None,
                    table: Sequence[tuple[str, tuple[str, ...]]] = T5_LOGICAL_AXES) -> Params:
  """A NamedSharding per parameter: what `load_t5x_params(shardings=...)` reads onto."""
  specs = partition_specs(params, mesh, rules, table)
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def place_params(params: Params, mesh: Mesh, rules: dict[str, str | None] | None = None,
                 table: Sequence[tuple[str, tuple[str, ...]]] = T5_LOGICAL_AXES) -> Params:
  """Puts every parameter on the mesh, split as the rules say (replicated over 'data')."""
  return jax.device_put(params, param_shardings(params, mesh, rules, table))


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
