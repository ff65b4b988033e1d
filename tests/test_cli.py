"""The `gbair` command end to end in subprocesses: kill -9 and resume, refusals, bad input.

A run killed mid-round and resumed: tests/test_run_guarantees.py (one kill covers the lock
and the resume).

Uses a tiny random BERT on a small CSV written here, so each process takes seconds.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import gbair_in_process, write_sentiment_csv, write_tiny_run_gin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GBAIR = [sys.executable, "-m", "gbair_jax.main"]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  root = tmp_path_factory.mktemp("cli")
  write_sentiment_csv(root / "data.csv")
  return write_tiny_run_gin(root / "tiny_run.gin", root / "data.csv", num_epochs=3, extra="""
run.num_rounds = 2
run.strategy = 'tracin_opponents'
""")


def gbair(*args, check=True, timeout=300):
  proc = subprocess.run([*GBAIR, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  if check and proc.returncode != 0:
    raise AssertionError(f"gbair {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
  return proc


def run_until(args, path, timeout=300):
  """Starts gbair and kill -9s it as soon as `path` exists (a finished epoch or round)."""
  proc = subprocess.Popen([*GBAIR, *args], cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  deadline = time.time() + timeout
  try:
    while not os.path.exists(path):
      assert proc.poll() is None, "gbair ended before the kill point"
      assert time.time() < deadline, "kill point never reached"
      time.sleep(0.05)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_train_killed_mid_epoch_resumes_to_the_same_prompt(config, tmp_path):
  out = str(tmp_path / "train")
  run_until(["train", f"--gin_file={config}", f"--output_dir={out}"],
            os.path.join(out, "round_0", "checkpoints", "1"))
  assert not os.path.exists(os.path.join(out, "round_0", "metrics.json"))
  gbair("train", f"--gin_file={config}", f"--output_dir={out}")
  metrics = json.load(open(os.path.join(out, "round_0", "metrics.json")))
  assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
  # Same prompt as an uninterrupted run of the same config (trained in-process here).
  from gbair_jax import config as config_lib
  from gbair_jax.train import checkpoints
  from gbair_jax.train.experiment import build_experiment
  from gbair_jax.train.trainer import train_prompt
  config_lib.parse_gin([config])
  exp = build_experiment()
  fresh = train_prompt(exp.spec, exp.frozen, exp.tokenized_splits(), str(tmp_path / "fresh"),
                       progress=False, tensorboard=False, mesh=exp.mesh)
  np.testing.assert_allclose(checkpoints.load_prompt(os.path.join(out, "round_0"), 3), fresh.prompt,
                             rtol=1e-6, atol=1e-7)


def test_different_config_is_refused_and_nothing_overwritten(config, tmp_path, capsys):
  out = str(tmp_path / "run")
  os.makedirs(out)
  with open(os.path.join(out, "config.gin"), "w") as f:
    f.write("# another run\n")
  assert gbair_in_process("train", f"--gin_file={config}", f"--output_dir={out}") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("gbair: error: ")
  assert "different gin config" in err[0]
  assert open(os.path.join(out, "config.gin")).read() == "# another run\n"
  assert os.listdir(out) == ["config.gin"]


@pytest.mark.parametrize("flag, message", [
    ("--gin.run.strategy='nope'", "strategy 'nope' is unknown"),
    ("--gin.selection_size.select_count=1000", "select_count=1000"),
    ("--gin.no_such_thing.x=1", "no_such_thing"),
    ("--gin.CORRUPTION_RATE=1.5", "CORRUPTION_RATE"),
    ("--gin.build_classifier.prompt_length=0", "build_classifier.prompt_length"),
])
def test_bad_bindings_fail_with_one_line(config, tmp_path, flag, message, capsys):
  # In-process (the subprocess tests above cover the console script itself).
  out = tmp_path / "bad"
  assert gbair_in_process("run", f"--gin_file={config}", f"--output_dir={out}", flag) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("gbair: error:") and message in err[0], err
  assert not (out / "ledger.jsonl").exists() and not (out / "round_0").exists()


def test_missing_gin_file_names_it(tmp_path, capsys):
  assert gbair_in_process("train", "--gin_file=gin/runs/nope.gin",
                          f"--output_dir={tmp_path / 'o'}") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("gbair: error:") and "gin/runs/nope.gin" in err[0]
  assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("script, args, expected", [
    ("tpu_vm.sh", ["--name=pod", "--zone=z", "--gin_file=g.gin", "--output_dir=gs://b/r"],
     ["tpu-vm create pod", "--worker=all", "gbair run --multihost --gin_file=g.gin"]),
    ("gpu_multinode.sh", ["--hosts=n0,n1", "--gin_file=g.gin", "--output_dir=/o"],
     ["ssh n0", "--process_id=0", "ssh n1", "--process_id=1", "--coordinator_address=n0:1234"]),
    ("local.sh", ["--gin_file=g.gin", "--output_dir=o"], ["make venv", "gbair run --gin_file=g.gin"]),
])
def test_launch_scripts_dry_run_print_and_execute_nothing(script, args, expected):
  proc = subprocess.run(["bash", os.path.join(REPO, "launch", script), *args, "--dry_run"],
                        capture_output=True, text=True, timeout=30, env={**os.environ, "PATH": "/usr/bin:/bin"})
  assert proc.returncode == 0, proc.stderr
  for piece in expected:
    assert piece in proc.stdout
  assert all(line.startswith("+ ") for line in proc.stdout.strip().splitlines())


def test_launch_script_rejects_missing_flag():
  proc = subprocess.run(["bash", os.path.join(REPO, "launch", "tpu_vm.sh"), "--dry_run"],
                        capture_output=True, text=True, timeout=30)
  assert proc.returncode == 2 and "--name is required" in proc.stderr


@pytest.mark.parametrize("gin_file", sorted(
    f for f in os.listdir(os.path.join(REPO, "gin", "runs")) if f.endswith(".gin")))
def test_every_run_config_parses(gin_file):
  """Run configs (paper-scale ones included) name only real configurables and files."""
  import gin as gin_lib
  from gbair_jax import config as config_lib
  try:
    config_lib.parse_gin([os.path.join("gin", "runs", gin_file)])
    assert "run.num_rounds" in gin_lib.config_str() or "train_prompt" in gin_lib.config_str()
  finally:
    gin_lib.clear_config()


def test_compare_runs_each_strategy_on_the_same_round_zero(config, tmp_path):
  from gbair_jax import config as config_lib
  from gbair_jax.recovery import compare
  config_lib.parse_gin([config], ["run.num_rounds = 1", "train_prompt.tensorboard = False",
                                  "run.progress = False"])
  out = str(tmp_path / "compare")
  results = compare.compare(out, ["loss", "random"])
  assert set(results) == {"loss", "random"}
  # Round 0 is shared: same test metrics; the strategies then pick different examples.
  assert results["loss"]["rounds"][0]["test"] == results["random"]["rounds"][0]["test"]
  ledgers = [open(os.path.join(out, s, "ledger.jsonl")).read() for s in ("loss", "random")]
  assert ledgers[0] != ledgers[1]
  table = open(os.path.join(out, "comparison.md")).read()
  assert "| loss |" in table and "| random |" in table and "clean reference" in table
  assert os.path.getsize(os.path.join(out, "comparison.png")) > 0
