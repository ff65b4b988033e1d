"""One Orbax checkpoint per epoch: prompt, optimizer state and JSON metadata.

Layout: `<round_dir>/checkpoints/<epoch>/{prompt,opt_state,meta}`. The metadata holds the
epoch, the global step and the learning rate used in that epoch, which TracIn uses to
weight checkpoints. Backbone weights are never written here. Orbax writes local paths and
gs:// itself; for other filesystems (ram://, tests) `checkpoint_location.local_root` puts
the checkpoints in a local folder instead.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import gin
import numpy as np
import orbax.checkpoint as ocp

from gbair_jax.errors import UserError
from gbair_jax.runtime import files
from gbair_jax.train import ensemble

ITEMS = ("prompt", "opt_state", "meta")


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
  epoch: int
  step: int
  learning_rate: float
  meta: dict


# URI schemes Orbax (epath + tensorstore) writes itself; local paths too.
ORBAX_SCHEMES = ("gs://",)


@gin.configurable
def checkpoint_location(local_root: str | None = None) -> str | None:
  """Where checkpoints go when the run directory is on a filesystem Orbax cannot write.

  Args:
    local_root: a local folder; a round `ram://run/round_0` then keeps its checkpoints
      in `<local_root>/ram/run/round_0/checkpoints` (everything else stays in the run
      directory). None (default): such a run directory is refused before anything runs.
  """
  return local_root


def checkpoint_dir(round_dir: str) -> str:
  """`<round_dir>/checkpoints` as Orbax gets it (absolute if local), or its local stand-in.

  Raises:
    UserError: Orbax cannot write round_dir's filesystem and no local_root is set.
  """
  if files.is_local(round_dir) or str(round_dir).startswith(ORBAX_SCHEMES):
    return files.for_orbax(files.join(round_dir, "checkpoints"))
  local_root = checkpoint_location()
  if not local_root:
    raise UserError(f"{round_dir}: Orbax cannot write checkpoints to this filesystem (it "
                    f"writes local paths and {', '.join(ORBAX_SCHEMES)}); set "
                    "checkpoint_location.local_root to a local folder for them")
  scheme, rest = str(round_dir).split("://", 1)
  return os.path.join(os.path.abspath(local_root), scheme, rest.strip("/"), "checkpoints")


def manager(round_dir: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      checkpoint_dir(round_dir),
      options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True),
      item_names=ITEMS)


def save_epoch(mngr: ocp.CheckpointManager, epoch: int, prompt, opt_state, meta: dict) -> None:
  """Writes epoch `epoch` and waits: a finished epoch is on disk before the next starts.

  The (small) prompt and optimizer state are saved as host numpy arrays: with several
  processes each holds its own replica on a local device, which Orbax cannot save as a
  jax.Array, while numpy values are written once, by the primary process."""
  import jax  # local: keeps this module importable without touching devices
  prompt, opt_state = jax.device_get((prompt, opt_state))
  mngr.save(epoch, args=ocp.args.Composite(
      prompt=ocp.args.StandardSave({"prompt": prompt}),
      opt_state=ocp.args.StandardSave(opt_state),
      meta=ocp.args.JsonSave(meta)))
  mngr.wait_until_finished()


def restore_epoch(mngr: ocp.CheckpointManager, epoch: int, abstract_prompt, abstract_opt_state):
  """Returns (prompt, opt_state, meta); abstract targets keep optax state types intact."""
  restored = mngr.restore(epoch, args=ocp.args.Composite(
      prompt=ocp.args.StandardRestore({"prompt": abstract_prompt}),
      opt_state=ocp.args.StandardRestore(abstract_opt_state),
      meta=ocp.args.JsonRestore()))
  return restored["prompt"]["prompt"], restored["opt_state"], dict(restored["meta"])


def restore_epoch_meta(mngr: ocp.CheckpointManager, epoch: int) -> dict:
  return dict(mngr.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])


def list_checkpoints(round_dir: str) -> list[CheckpointInfo]:
  """The round's finished epochs in order, with the learning rate each was trained at."""
  if not files.isdir(checkpoint_dir(round_dir)):
    return []
  mngr = manager(round_dir)
  infos = []
  for epoch in sorted(mngr.all_steps()):
    meta = restore_epoch_meta(mngr, epoch)
    infos.append(CheckpointInfo(epoch=int(meta["epoch"]), step=int(meta["step"]),
                                learning_rate=float(meta["learning_rate"]), meta=meta))
  return infos


def load_prompt(round_dir: str, epoch: int) -> np.ndarray:
  """The prompt [P, D] saved at `epoch` (no optimizer needed to read it)."""
  mngr = manager(round_dir)
  restored = mngr.restore(epoch, args=ocp.args.Composite(prompt=ocp.args.StandardRestore()))
  return np.asarray(restored["prompt"]["prompt"])


def load_tracin_checkpoints(round_dir: str) -> list[tuple[np.ndarray, float]]:
  """[(prompt, learning_rate)] for every epoch: the input of TracInCP (an ensemble's member
  0, train/ensemble.py)."""
  return [(ensemble.first_member(load_prompt(round_dir, info.epoch)), info.learning_rate)
          for info in list_checkpoints(round_dir)]


def as_abstract(tree: Any):
  """Restore target for a tree saved by `save_epoch`: host numpy arrays of its shapes."""
  import jax  # local: keeps this module importable without touching devices
  return jax.tree.map(np.zeros_like, jax.device_get(tree))
