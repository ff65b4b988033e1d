"""`gbair influence`: the top TracIn proponents and opponents of chosen queries.

Reads a finished round of a run (its gin config, checkpoints and ledger), scores the
training set as it was labeled in that round, writes
`<run>/round_<r>/influence/<queries>_top<k>.jsonl` (influence/records.py has the format)
and prints a readable table.

Queries: validation examples (`misclassified`, `validation`, `ids:1,2,3`), or the round's
`suspects`: the training examples the strategy selected (from `proposals.json` of a round
paused for review, else `suspects.jsonl`), each at its current label.
"""
from __future__ import annotations

import json

import numpy as np

from gbair_jax import config
from gbair_jax.data import ledger as ledger_lib
from gbair_jax.data.ledger import apply_ledger, read_ledger
from gbair_jax.errors import UserError
from gbair_jax.influence import records as records_lib
from gbair_jax.runtime import files
from gbair_jax.runtime import process
from gbair_jax.train import checkpoints
from gbair_jax.train.experiment import CONFIG_FILE, build_experiment, check_data
from gbair_jax.train.trainer import predict_logits

SUSPECTS = "suspects"


def round_suspect_ids(round_dir: str) -> list[int]:
  """The round's suspects, best first: from proposals.json (a round paused for review),
  else from suspects.jsonl (the changes the round applied)."""
  from gbair_jax.review import proposals as proposals_lib  # pylint: disable=g-import-not-at-top
  proposals = proposals_lib.read_proposals(round_dir)
  if proposals is not None:
    return [int(s["example_id"]) for s in proposals["suspects"]]
  path = files.join(round_dir, "suspects.jsonl")
  if not files.exists(path):
    raise UserError(f"{round_dir}: no suspects (neither {proposals_lib.FILE_NAME} nor "
                    "suspects.jsonl): the round selected none, or has not been scored yet")
  return [int(json.loads(line)["example_id"])
          for line in files.read_text(path).splitlines() if line.strip()]


def run(output_dir: str, round_index: int, queries: str = "misclassified", top_k: int = 5,
        batch_size: int = 32, progress: bool = True) -> str:
  round_dir = files.join(output_dir, f"round_{round_index}")
  config_path = files.join(output_dir, CONFIG_FILE)
  if not files.exists(config_path):
    raise UserError(f"{config_path}: not found; --output_dir must be a run written by "
                    "`gbair train` or `gbair run`")
  if top_k < 1:
    raise UserError(f"--top_k must be >= 1, got {top_k}")
  if batch_size < 1:
    raise UserError(f"--batch_size must be >= 1, got {batch_size}")
  config.parse_run_config(config_path)  # first: it says where the checkpoints are
  ckpts = checkpoints.load_tracin_checkpoints(round_dir)
  if not ckpts:
    raise UserError(f"{round_dir}: no finished epoch checkpoints for --round={round_index}")
  suspect_ids = round_suspect_ids(round_dir) if queries == SUSPECTS else None
  exp = build_experiment()
  check_data(output_dir, exp.data)  # the run's data, not a file edited since
  splits = exp.tokenized_splits()
  train = apply_ledger(splits["train"],
                       read_ledger(files.join(output_dir, ledger_lib.FILE_NAME)),
                       before_round=round_index)
  validation = splits["validation"]
  names = exp.data.label_names
  if queries == SUSPECTS:
    if not suspect_ids:
      raise UserError(f"--queries=suspects: round {round_index} selected no suspect")
    train_logits = predict_logits(exp.spec, ckpts[-1][0], exp.frozen, train, mesh=exp.mesh)
    records = records_lib.suspect_records(
        exp.spec, exp.frozen, ckpts, train, validation, suspect_ids, train_logits, names,
        top_k, mesh=exp.mesh, batch_size=batch_size, progress=progress)
  else:
    logits = predict_logits(exp.spec, ckpts[-1][0], exp.frozen, validation, mesh=exp.mesh)
    query_rows = records_lib.select_queries(validation, logits, queries)
    if len(query_rows["label"]) == 0:
      raise UserError(f"--queries={queries}: no validation example selected "
                      "(the model may get every one right)")
    keep = np.isin(validation["example_id"], query_rows["example_id"])
    records = records_lib.influence_records(
        exp.spec, exp.frozen, ckpts, train, query_rows, names, logits[keep].argmax(-1), top_k,
        mesh=exp.mesh, batch_size=batch_size, progress=progress)
  path = records_lib.records_path(round_dir, queries, top_k)
  if process.is_primary():
    records_lib.write_records(path, records)
  print(records_lib.format_records(records))
  print(f"influence: {path}")
  return path
