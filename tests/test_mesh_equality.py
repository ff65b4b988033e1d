"""`gbair run` gives the same ledger and report on every mesh it can be given.

One tiny run (120-row CSV, one recovery round) on 1 device is the reference; then 8 fake
CPU devices, and the tiny T5 with model parallelism 2 and partitioned frozen weights on one
process and on two local processes (gloo, 4 fake devices each, a localhost coordinator). Devices add in
another order, so scores are compared to 1e-4; the ledgers' decisions must be identical.
"""
import json
import math
import os
import subprocess
import sys

import pytest

from tests.helpers import free_port, write_sentiment_csv, write_tiny_run_gin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GBAIR = [sys.executable, "-m", "gbair_jax.main", "run"]
TIMEOUT_S = 400
T5 = ["gin/models/t5_tiny.gin"]
MODEL_PARALLEL = ["--gin.partitioning.make_mesh.model_parallelism=2",
                  "--gin.build_experiment.partition_frozen=True"]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  root = tmp_path_factory.mktemp("mesh")
  write_sentiment_csv(root / "data.csv")
  return root, write_tiny_run_gin(root / "tiny_run.gin", root / "data.csv", extra="""
train_prompt.tensorboard = False
run.num_rounds = 1
run.references = ('no_recovery',)
""")


def gbair_run(config, name, devices, processes=1, model=(), flags=()):
  """Runs `gbair run` on `processes` local processes with `devices` fake CPU devices each."""
  root, gin_file = config
  out = str(root / name)
  args = [*GBAIR, f"--gin_file={gin_file}", *[f"--gin_file={f}" for f in model],
          f"--output_dir={out}", "--gin.run.progress=False", *flags]
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  if processes > 1:
    port = free_port()
    commands = [args + [f"--coordinator_address=127.0.0.1:{port}",
                        f"--num_processes={processes}", f"--process_id={i}"]
                for i in range(processes)]
  else:
    commands = [args]
  workers = [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for c in commands]
  try:
    logs = [w.communicate(timeout=TIMEOUT_S)[1] for w in workers]
  finally:
    for w in workers:
      w.kill()
  for w, log in zip(workers, logs):
    assert w.returncode == 0, log[-3000:]
  return out


def read_run(run_dir):
  with open(os.path.join(run_dir, "ledger.jsonl")) as f:
    ledger = [json.loads(line) for line in f]
  with open(os.path.join(run_dir, "report.json")) as f:
    report = json.load(f)
  with open(os.path.join(run_dir, "round_0", "metrics.json")) as f:
    metrics = json.load(f)
  return ledger, report, metrics


def assert_close(got, want, path="report"):
  """Equal structure and strings; numbers to 1e-4 (relative, or absolute near zero)."""
  if isinstance(want, dict):
    assert sorted(got) == sorted(want), path
    for key in want:
      assert_close(got[key], want[key], f"{path}.{key}")
  elif isinstance(want, list):
    assert len(got) == len(want), path
    for i, (g, w) in enumerate(zip(got, want)):
      assert_close(g, w, f"{path}[{i}]")
  elif isinstance(want, float) and not isinstance(got, bool):
    assert math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-6), f"{path}: {got} != {want}"
  else:
    assert got == want, f"{path}: {got!r} != {want!r}"


def assert_same_run(run_dir, reference_dir, mesh, num_processes):
  ledger, report, metrics = read_run(run_dir)
  want_ledger, want_report, _ = read_run(reference_dir)
  assert len(ledger) == 5 and len(want_ledger) == 5
  assert_close(ledger, want_ledger, "ledger")
  # What ran is recorded (in the report and in each round's metrics.json).
  for record in (report, metrics):
    assert record["mesh"] == mesh and record["num_processes"] == num_processes
    assert record["device_kind"]
  comparable = lambda r: {k: v for k, v in r.items()
                          if k not in ("config", "mesh", "device_kind", "num_processes")}
  for r in report["rounds"] + want_report["rounds"]:
    r.pop("seconds")
  assert_close(comparable(report), comparable(want_report))


@pytest.fixture(scope="module")
def bert_one_device(config):
  out = gbair_run(config, "bert_1", devices=1)
  _, report, _ = read_run(out)
  assert report["mesh"] == {"data": 1, "model": 1} and report["num_processes"] == 1
  return out


@pytest.fixture(scope="module")
def t5_one_device(config):
  return gbair_run(config, "t5_1", devices=1, model=T5)


def test_eight_devices_run_like_one(config, bert_one_device):
  out = gbair_run(config, "bert_8", devices=8)
  assert_same_run(out, bert_one_device, {"data": 8, "model": 1}, 1)


def test_t5_with_model_parallelism_runs_like_one_device(config, t5_one_device):
  out = gbair_run(config, "t5_8_mp2", devices=8, model=T5, flags=MODEL_PARALLEL)
  assert_same_run(out, t5_one_device, {"data": 4, "model": 2}, 1)


def test_t5_partitioned_over_two_processes_runs_like_one_device(config, t5_one_device):
  """Frozen weights split over `model` across two hosts are never gathered on one; the
  `data` axis spans both processes, so each feeds its half of every global batch and
  process 0 alone writes (the multi-process test for every backbone: that path does not
  depend on the model, and a second two-process run would cost a minute of the suite)."""
  out = gbair_run(config, "t5_2x4_mp2", devices=4, processes=2, model=T5,
                  flags=MODEL_PARALLEL)
  assert_same_run(out, t5_one_device, {"data": 4, "model": 2}, 2)
