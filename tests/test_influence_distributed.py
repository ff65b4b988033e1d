"""Multi-host TracIn for real: two JAX processes on localhost score exactly like one.

The test launches this file twice as `--worker` (2 CPU devices each, gloo collectives,
coordinator on a free local port); both iterate the same global batches, and each feeds
only its own rows of every batch to the 4-device mesh.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

# This file also runs as a worker script: make the repo root importable there too.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.helpers import free_port, logistic_loss  # noqa: E402  pylint: disable=g-import-not-at-top

NUM_PROCESSES = 2
TIMEOUT_S = 150




def make_problem():
  """Deterministic train batches (11 of 4, last padded), queries and 3 checkpoints."""
  rng = np.random.default_rng(7)
  prompt_shape, batch_size = (3, 4), 4

  def batches(count, first_id):
    out = []
    for start in range(0, count, batch_size):
      out.append(dict(features=rng.normal(size=(batch_size, 12)).astype(np.float32),
                      label=rng.integers(0, 2, batch_size).astype(np.int32),
                      example_id=np.arange(first_id + start, first_id + start + batch_size,
                                           dtype=np.int64) * 1_000_003,  # beyond int32
                      valid=np.arange(start, start + batch_size) < count))
    return out

  train, queries = batches(41, 10**12), batches(6, 0)
  checkpoints = [(rng.normal(size=prompt_shape).astype(np.float32), lr)
                 for lr in (0.3, 0.2, 0.1)]
  return train, queries, checkpoints, {"bias": np.float32(0.25)}


def run_worker(process_id: int, port: int, out_path: str) -> None:
  from gbair_jax.influence import tracin
  from gbair_jax.runtime import mesh as mesh_lib
  from gbair_jax.runtime import process
  started = process.initialize(coordinator_address=f"127.0.0.1:{port}",
                               num_processes=NUM_PROCESSES, process_id=process_id)
  import jax
  assert started and jax.process_count() == NUM_PROCESSES and jax.device_count() == 4
  train, queries, checkpoints, frozen = make_problem()
  result = tracin.tracin_scores(logistic_loss, checkpoints, frozen, train, queries, top_k=3,
                                keep_scores=True, mesh=mesh_lib.make_mesh(), progress=False)
  np.savez(out_path, **{k: v for k, v in vars(result).items()})


def _by_id(ids, *arrays):
  order = np.argsort(ids)
  return [a[order] for a in (ids,) + arrays]


def test_two_processes_score_like_one(tmp_path):
  from gbair_jax.influence import tracin
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  outputs = [tmp_path / f"process_{i}.npz" for i in range(NUM_PROCESSES)]
  workers = [subprocess.Popen([sys.executable, __file__, "--worker", str(i), str(port),
                               str(outputs[i])], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for i in range(NUM_PROCESSES)]
  logs = []
  try:
    for worker in workers:
      logs.append(worker.communicate(timeout=TIMEOUT_S)[0])
  except subprocess.TimeoutExpired:
    for worker in workers:
      worker.kill()
    pytest.fail(f"2-process TracIn did not finish in {TIMEOUT_S} s")
  for worker, log in zip(workers, logs):
    assert worker.returncode == 0, log[-3000:]

  train, queries, checkpoints, frozen = make_problem()
  single = tracin.tracin_scores(logistic_loss, checkpoints, frozen, train, queries, top_k=3,
                                keep_scores=True, progress=False)
  ids, scores, self_influence, negative = _by_id(single.example_ids, single.scores,
                                                 single.self_influence,
                                                 single.negative_influence)
  assert len(ids) == 41
  for path in outputs:
    multi = np.load(path)
    got = _by_id(multi["example_ids"], multi["scores"], multi["self_influence"],
                 multi["negative_influence"])
    np.testing.assert_array_equal(got[0], ids)
    for want, have in zip((scores, self_influence, negative), got[1:]):
      assert np.max(np.abs(have - want)) <= 1e-5 * np.max(np.abs(want))
    np.testing.assert_array_equal(multi["query_ids"], single.query_ids)
    np.testing.assert_array_equal(multi["opponent_ids"], single.opponent_ids)
    np.testing.assert_array_equal(multi["proponent_ids"], single.proponent_ids)
    np.testing.assert_allclose(multi["opponent_scores"], single.opponent_scores, rtol=1e-5)


def test_single_process_settings_are_a_no_op(monkeypatch):
  from gbair_jax.runtime import process
  for name in (process.COORDINATOR_ENV, process.NUM_PROCESSES_ENV,
               process.PROCESS_ID_ENV):
    monkeypatch.delenv(name, raising=False)
  started = []
  monkeypatch.setattr("jax.distributed.initialize", lambda **kw: started.append(kw))
  assert not process.initialize()
  assert not process.initialize(num_processes=1)
  monkeypatch.setenv(process.NUM_PROCESSES_ENV, "1")
  assert not process.initialize()
  assert not started


def test_multi_process_settings_come_from_flags_or_environment(monkeypatch):
  from gbair_jax.errors import UserError
  from gbair_jax.runtime import process
  started = []
  monkeypatch.setattr("jax.distributed.initialize", lambda **kw: started.append(kw))
  monkeypatch.setenv(process.COORDINATOR_ENV, "10.0.0.1:1234")
  monkeypatch.setenv(process.NUM_PROCESSES_ENV, "4")
  monkeypatch.setenv(process.PROCESS_ID_ENV, "3")
  assert process.initialize()
  assert process.initialize(process_id=1)  # a flag beats the environment
  assert started == [dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3),
                     dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=1)]
  with pytest.raises(UserError, match="process_id=4"):
    process.initialize(process_id=4)
  monkeypatch.delenv(process.COORDINATOR_ENV)
  with pytest.raises(UserError, match="coordinator"):
    process.initialize()
  monkeypatch.setenv(process.NUM_PROCESSES_ENV, "two")
  with pytest.raises(UserError, match="JAX_NUM_PROCESSES"):
    process.initialize()


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
  run_worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
