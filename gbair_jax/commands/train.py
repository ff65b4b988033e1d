"""`gbair train`: prompt-tune round 0 only (no scoring): checkpoints per epoch and
`round_0/metrics.json`, resumable and refused on a different config or data like `gbair run`.
"""
from __future__ import annotations

from gbair_jax import config as config_lib
from gbair_jax.data import describe
from gbair_jax.runtime import files
from gbair_jax.runtime import process
from gbair_jax.train import checkpoints
from gbair_jax.train.experiment import build_experiment, check_output_dir_free, claim_output_dir
from gbair_jax.train.trainer import train_prompt


def run(output_dir: str) -> dict:
  """Trains round 0; returns round_0/metrics.json's content."""
  round_dir = files.join(output_dir, "round_0")
  check_output_dir_free(output_dir)  # refused at once, not after loading the data
  checkpoints.checkpoint_dir(round_dir)  # a filesystem Orbax cannot write: refused first
  exp = build_experiment()  # loads and checks the data before anything is written
  splits = exp.tokenized_splits()
  primary = process.is_primary()
  if primary:
    for line in describe.format_rows_read(exp.data.rows_read):
      print(line, flush=True)
  with claim_output_dir(output_dir, config_lib.recorded_config(), exp.data):
    result = train_prompt(exp.spec, exp.frozen, splits, round_dir, progress=primary,
                          mesh=exp.mesh)
  if primary:
    print(f"test: {files.dumps_json(result.metrics.get('test', {}), indent=None)}")
    print(f"metrics: {files.join(round_dir, 'metrics.json')}")
  return result.metrics
