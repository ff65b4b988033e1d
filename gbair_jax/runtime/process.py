"""Several processes (hosts): start JAX's distributed runtime, agree, and let one write.

JAX's own runtime does the work (one global mesh over every process's devices, see
mesh.py); this module only resolves the coordinator settings and keeps processes in step.
"""
from __future__ import annotations

import os

import jax
from jax.experimental import multihost_utils

from gbair_jax.errors import UserError

# JAX itself reads JAX_COORDINATOR_ADDRESS; the other two are read here, under JAX-like names.
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise UserError(f"environment variable {name}={value!r} is not an integer") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto_detect: bool = False) -> bool:
  """Starts `jax.distributed` from arguments (flags) or the environment; returns if it did.

  Each argument falls back to its environment variable (JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID). A single process (nothing set, or one process) is a
  no-op, unless `auto_detect` asks JAX to find the cluster itself (TPU pods, SLURM, ...).
  Call it before anything touches a JAX device.

  Raises:
    UserError: a multi-process setting is incomplete or inconsistent.
  """
  coordinator_address = coordinator_address or os.environ.get(COORDINATOR_ENV) or None
  num_processes = num_processes if num_processes is not None else _env_int(NUM_PROCESSES_ENV)
  process_id = process_id if process_id is not None else _env_int(PROCESS_ID_ENV)
  if auto_detect and coordinator_address is None and num_processes is None:
    jax.distributed.initialize()
    return True
  if num_processes is None or num_processes == 1:
    return False
  if num_processes < 1:
    raise UserError(f"num_processes must be >= 1, got {num_processes}")
  if coordinator_address is None or process_id is None:
    raise UserError(f"num_processes={num_processes} also needs the coordinator address "
                    f"({COORDINATOR_ENV}) and this process's id ({PROCESS_ID_ENV})")
  if not 0 <= process_id < num_processes:
    raise UserError(f"process_id={process_id} is not in [0, num_processes={num_processes})")
  if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    # CPU devices of different processes only talk through a collectives library (JAX
    # 0.10.2 defaults to gloo already; older configs may have turned it off).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True


def is_primary() -> bool:
  """Whether this process writes the run's files: every process computes the same rounds
  (one program over the global mesh, results replicated), process 0 alone writes them."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process got here (e.g. until process 0 wrote what all read next)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
