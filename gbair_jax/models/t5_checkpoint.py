"""Reads the model weights (`target`) of T5X checkpoints, in both layouts T5X has written.

Orbax (today: `checkpoint_<step>/state/`) and the older msgpack + TensorStore layout
(`checkpoint_<step>/checkpoint` whose leaves point at zarr arrays); optimizer state is never read.
"""
from __future__ import annotations

import copy
import re
from typing import Any, Callable, Mapping

from etils import epath
import flax.serialization
import flax.traverse_util
import jax
import numpy as np

from gbair_jax.errors import UserError

Params = Any
# T5X's msgpack format version (3: bfloat16 stored natively, not as uint16).
LEGACY_VERSION = 3
_ORBAX_METADATA = "_METADATA"
_LEGACY_FILE = "checkpoint"
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")


# ---------------------------------------------------------------------------------------
# Finding the step directory and its layout.
# ---------------------------------------------------------------------------------------


def _is_step_dir(path: epath.Path) -> bool:
  return ((path / _LEGACY_FILE).exists() or (path / _ORBAX_METADATA).exists()
          or (path / "state" / _ORBAX_METADATA).exists())


def find_step_dir(path: str, step: int | None = None) -> epath.Path:
  """Resolves a model dir (+ step, default latest), a step dir, or a `checkpoint` file."""
  root = epath.Path(path)
  try:
    if root.name == _LEGACY_FILE and root.is_file():
      return root.parent
    if not root.is_dir():
      hint = (" (gs:// needs Google Cloud access and credentials; or copy it locally with "
              "gsutil -m cp -r)" if path.startswith("gs://") else "")
      raise UserError(f"T5X checkpoint {path!r} does not exist (or is not a directory){hint}")
    if step is None and _is_step_dir(root):
      return root
    steps = sorted(int(m.group(1)) for m in (_STEP_DIR.match(p.name) for p in root.iterdir()) if m)
  except UserError:
    raise
  except Exception as error:  # pylint: disable=broad-except  # gfile/GCS raise many types
    raise UserError(f"cannot read T5X checkpoint {path!r}: {type(error).__name__}: {error}"
                    ) from error
  if step is not None:
    if step not in steps:
      raise UserError(f"T5X checkpoint {path!r} has no checkpoint_{step} (steps: {steps})")
    return root / f"checkpoint_{step}"
  if not steps:
    raise UserError(f"{path!r} is not a T5X checkpoint: no `checkpoint` file, Orbax "
                    "`_METADATA` or checkpoint_<step> directories in it")
  return root / f"checkpoint_{steps[-1]}"


def checkpoint_layout(step_dir: epath.Path) -> tuple[str, epath.Path]:
  """("orbax", dir of the Orbax pytree) or ("legacy", dir holding the msgpack file).

  T5X's Orbax manager writes the train state in a `state/` item; early Orbax T5X wrote
  it in the step dir itself, next to an Orbax-written `checkpoint` file, so `_METADATA`
  is what tells the two families apart (as T5X's own `detect_checkpoint_type` does).
  """
  if (step_dir / "state" / _ORBAX_METADATA).exists():
    return "orbax", step_dir / "state"
  if (step_dir / _ORBAX_METADATA).exists():
    return "orbax", step_dir
  if (step_dir / _LEGACY_FILE).exists():
    return "legacy", step_dir
  raise UserError(f"{step_dir} holds neither an Orbax checkpoint nor a T5X `checkpoint` file")


def _target_subtree_key(tree_keys: Mapping[str, Any], where: str) -> tuple[str, ...]:
  """The key path of the model weights: `target`, or `optimizer/target` (versioned)."""
  if "target" in tree_keys:
    return ("target",)
  if "optimizer" in tree_keys and isinstance(tree_keys["optimizer"], Mapping) and (
      "target" in tree_keys["optimizer"]):
    return ("optimizer", "target")
  raise UserError(f"{where}: no `target` (model weights) in the checkpoint; top-level keys: "
                  f"{sorted(tree_keys)}")


def load_t5x_params(path: str, step: int | None = None, *, dtype: Any = None,
                    shardings: Any = None) -> Params:
  """The `target` tree of a T5X checkpoint (the model's "params"), as numpy arrays.

  Args:
    path: model dir, step dir or `checkpoint` file; local or gs://.
    step: step to read from a model dir (None: the latest).
    dtype: cast every weight to this dtype (None: as stored).
    shardings: optional tree of `jax.sharding.Sharding` matching `target` (see
      `runtime.mesh.param_shardings`): Orbax checkpoints are then read straight onto
      the devices, each host reading only its shards; legacy ones are placed after reading.
  """
  step_dir = find_step_dir(path, step)
  layout, directory = checkpoint_layout(step_dir)
  if layout == "orbax":
    params = _load_orbax_target(directory, dtype, shardings)
  else:
    params = _load_legacy_target(directory, dtype)
    if shardings is not None:
      params = jax.device_put(params, shardings)
  return params


# ---------------------------------------------------------------------------------------
# Orbax layout.
# ---------------------------------------------------------------------------------------


def _load_orbax_target(directory: epath.Path, dtype: Any, shardings: Any) -> Params:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  # slow import

  metadata = ocp.PyTreeCheckpointHandler().metadata(directory).tree
  key_path = _target_subtree_key(metadata, str(directory))
  target_metadata = metadata
  for key in key_path:
    target_metadata = target_metadata[key]

  if shardings is None:
    item = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, dtype or m.dtype), target_metadata)
    restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype),
                                target_metadata)
  else:
    item = jax.tree.map(
        lambda m, s: jax.ShapeDtypeStruct(m.shape, dtype or m.dtype, sharding=s),
        target_metadata, shardings)
    restore_args = jax.tree.map(lambda m, s: ocp.ArrayRestoreArgs(sharding=s, dtype=dtype),
                                target_metadata, shardings)
  for key in reversed(key_path):
    item, restore_args = {key: item}, {key: restore_args}
  # partial_restore: the optimizer state next to `target` is neither read nor allocated.
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
    restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  for key in key_path:
    restored = restored[key]
  return restored


def write_orbax_t5x_checkpoint(model_dir: str, step: int, params: Params,
                               optimizer_state: Params | None = None,
                               use_ocdbt: bool = True) -> epath.Path:
  """Writes `{"target": params, "state": ...}` as T5X's Orbax manager does.

  Layout: `<model_dir>/checkpoint_<step>/state/` (Orbax pytree). T5X's manager writes it
  without OCDBT (`use_ocdbt=False`), Orbax's default is OCDBT; both read back the same.
  Used by the tests and to export weights for T5X.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  state = {"step": np.asarray(step, np.int32), "param_states": optimizer_state or {}}
  options = ocp.CheckpointManagerOptions(step_prefix="checkpoint", create=True)
  handler = ocp.PyTreeCheckpointHandler(use_ocdbt=use_ocdbt)
  with ocp.CheckpointManager(epath.Path(model_dir), options=options,
                             item_names=("state",), item_handlers={"state": handler}) as manager:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave({"target": params, "state": state})))
    manager.wait_until_finished()
  return epath.Path(model_dir) / f"checkpoint_{step}"


# ---------------------------------------------------------------------------------------
# Legacy layout: msgpack + TensorStore.
# ---------------------------------------------------------------------------------------


def _is_tensorstore_spec(value: Any) -> bool:
  return isinstance(value, Mapping) and {"driver", "kvstore", "metadata"} <= set(value)


def _absolute_spec(spec: Mapping[str, Any], step_dir: epath.Path, reading: bool = True
                   ) -> dict[str, Any]:
  """A spec written with a path relative to the step dir, made usable from here.

  T5X stores relative paths (and a dummy GCS bucket) so checkpoints can be moved; the
  reader supplies the directory, switching between the file and gcs drivers.
  """
  spec = copy.deepcopy(dict(spec))  # the caller's spec (written to msgpack) stays relative
  if reading:
    # Chunking and compression come from the stored .zarray; the msgpack's copy may
    # disagree with how the array was actually written.
    spec["metadata"].pop("chunks", None)
    spec["metadata"].pop("compressor", None)
  relative = spec["kvstore"].pop("path", None)
  if relative is None:  # tensorstore < 0.1.14 kept the path at the top level
    relative = spec.pop("path")
  location = str(step_dir)
  match = re.fullmatch(r"gs://([^/]*)/(.*)", location, re.DOTALL)
  if match:
    spec["kvstore"] = {"driver": "gcs", "bucket": match.group(1),
                       "path": f"{match.group(2).rstrip('/')}/{relative}"}
  else:
    spec["kvstore"] = {"driver": "file", "path": f"{location.rstrip('/')}/{relative}"}
  stored_dtype = spec.get("dtype") or spec["metadata"].get("dtype")
  if stored_dtype in ("uint16", "<u2"):
    raise UserError(f"{step_dir}/{relative}: bfloat16 stored as uint16 (T5X checkpoint "
                    "format version 2) is not supported; re-save it with a recent T5X")
  return spec


def _load_legacy_target(step_dir: epath.Path, dtype: Any) -> Params:
  import tensorstore as ts  # pylint: disable=g-import-not-at-top

  contents = flax.serialization.msgpack_restore((step_dir / _LEGACY_FILE).read_bytes())
  # Version 0 files are bare Flax optimizer state dicts; later ones wrap it.
  state = contents["optimizer"] if contents.get("version", 0) else contents
  if "target" not in state:
    raise UserError(f"{step_dir}/checkpoint: no `target` (model weights); keys: {sorted(state)}")

  flat = flax.traverse_util.flatten_dict(state["target"],
                                         is_leaf=lambda _, v: _is_tensorstore_spec(v))
  pending = {}
  params = {}
  for key, value in flat.items():
    if _is_tensorstore_spec(value):
      pending[key] = ts.open(_absolute_spec(value, step_dir), open=True, read=True)
    else:  # small unpartitioned leaves are stored inline in the msgpack file
      params[key] = np.asarray(value)
  # Open and read all arrays concurrently: a large model has hundreds of them.
  opened = {key: future.result() for key, future in pending.items()}
  reads = {key: store.read() for key, store in opened.items()}
  params.update({key: np.asarray(future.result()) for key, future in reads.items()})
  if dtype is not None:
    params = {key: value.astype(dtype) for key, value in params.items()}
  return flax.traverse_util.unflatten_dict(params)


def write_legacy_t5x_checkpoint(model_dir: str, step: int, params: Params,
                                optimizer_state: Params | None = None,
                                inline: Callable[[tuple[str, ...], np.ndarray], bool] = None
                                ) -> epath.Path:
  """Writes a checkpoint in T5X's msgpack + TensorStore layout (local paths only).

  `<model_dir>/checkpoint_<step>/checkpoint` is a msgpack of
  `{"version": 3, "optimizer": {"target": ..., "state": {"step", "param_states"}}}`
  whose array leaves are either inline arrays (`inline(path, array)` true: T5X does this
  for unpartitioned leaves) or TensorStore specs with a path relative to the step dir,
  e.g. `target.encoder.layers_0.attention.query.kernel`, holding a gzip zarr array.
  """
  import tensorstore as ts  # pylint: disable=g-import-not-at-top

  step_dir = epath.Path(model_dir) / f"checkpoint_{step}"
  step_dir.mkdir(parents=True, exist_ok=True)
  inline = inline or (lambda path, array: False)
  tree = {"target": params,
          "state": {"step": np.asarray(step, np.int32), "param_states": optimizer_state or {}}}

  def spec_for(name: str, array: np.ndarray) -> dict[str, Any]:
    return {"driver": "zarr", "dtype": array.dtype.name,
            "kvstore": {"driver": "file", "path": name},
            "metadata": {"compressor": {"id": "gzip"}, "shape": list(array.shape),
                         "chunks": list(array.shape)}}

  written = {}
  writes = []
  for key, value in flax.traverse_util.flatten_dict(tree).items():
    array = np.asarray(value)
    if array.ndim == 0 or inline(key, array):
      written[key] = array
      continue
    name = ".".join(key)
    spec = spec_for(name, array)
    store = ts.open(_absolute_spec(spec, step_dir, reading=False), create=True,
                    delete_existing=True).result()
    writes.append(store.write(array))
    written[key] = spec
  for future in writes:
    future.result()
  payload = {"version": LEGACY_VERSION,
             "optimizer": flax.traverse_util.unflatten_dict(written)}
  (step_dir / _LEGACY_FILE).write_bytes(flax.serialization.msgpack_serialize(payload))
  return step_dir


# ---------------------------------------------------------------------------------------
# Checking loaded weights against the model.
# ---------------------------------------------------------------------------------------


def check_params_match(params: Params, expected: Params, source: str) -> None:
  """Raises UserError naming every missing, unexpected or mis-shaped parameter."""
  got = {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(params).items()}
  want = {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(expected).items()}
  problems = [f"missing {name} {tuple(want[name].shape)}" for name in sorted(set(want) - set(got))]
  problems += [f"unexpected {name}" for name in sorted(set(got) - set(want))]
  problems += [f"{name}: checkpoint {tuple(got[name].shape)} != model {tuple(want[name].shape)}"
               for name in sorted(set(got) & set(want))
               if tuple(got[name].shape) != tuple(want[name].shape)]
  if problems:
    shown = "; ".join(problems[:8])
    if len(problems) > 8:
      shown += f"; ... ({len(problems)} in all)"
    raise UserError(f"{source}: the checkpoint does not fit the configured model (wrong size "
                    f"gin file?): {shown}")
