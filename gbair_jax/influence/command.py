"""`gbair influence`: the top TracIn proponents and opponents of chosen validation queries.

Reads a finished round of a run (its gin config, checkpoints and ledger), scores the
training set as it was labeled in that round, writes
`<run>/round_<r>/influence/<queries>_top<k>.jsonl` and prints a readable table.
"""
from __future__ import annotations

import textwrap

import numpy as np

from gbair_jax import config
from gbair_jax.data.ledger import apply_ledger, read_ledger
from gbair_jax.errors import UserError
from gbair_jax.influence import tracin
from gbair_jax.runtime import files
from gbair_jax.train import batches as batches_lib
from gbair_jax.train import checkpoints
from gbair_jax.train.experiment import CONFIG_FILE, build_experiment, check_data
from gbair_jax.train.trainer import predict_logits


def select_queries(validation: dict, logits: np.ndarray, queries: str) -> dict:
  """misclassified | validation | ids:1,2,3 -> the query rows of the validation split."""
  if queries == "misclassified":
    keep = logits.argmax(-1) != validation["label"]
  elif queries == "validation":
    keep = np.ones(len(validation["label"]), bool)
  elif queries.startswith("ids:"):
    try:
      wanted = [int(x) for x in queries[4:].split(",") if x]
    except ValueError as e:
      raise UserError(f"--queries={queries}: ids must be integers") from e
    missing = sorted(set(wanted) - set(validation["example_id"].tolist()))
    if missing:
      raise UserError(f"--queries: example ids {missing[:5]} are not in the validation split")
    keep = np.isin(validation["example_id"], wanted)
  else:
    raise UserError(f"--queries={queries}: expected misclassified, validation or ids:1,2,3")
  return {k: v[keep] for k, v in validation.items()}


def run(output_dir: str, round_index: int, queries: str = "misclassified", top_k: int = 5,
        progress: bool = True) -> str:
  round_dir = files.join(output_dir, f"round_{round_index}")
  config_path = files.join(output_dir, CONFIG_FILE)
  if not files.exists(config_path):
    raise UserError(f"{config_path}: not found; --output_dir must be a run written by "
                    "`gbair train` or `gbair run`")
  if top_k < 1:
    raise UserError(f"--top_k must be >= 1, got {top_k}")
  config.parse_gin([config_path])  # first: it says where the checkpoints are
  ckpts = checkpoints.load_tracin_checkpoints(round_dir)
  if not ckpts:
    raise UserError(f"{round_dir}: no finished epoch checkpoints for --round={round_index}")
  exp = build_experiment()
  check_data(output_dir, exp.data)  # the run's data, not a file edited since
  splits = exp.tokenized_splits()
  train = apply_ledger(splits["train"], read_ledger(files.join(output_dir, "ledger.jsonl")),
                       before_round=round_index)
  validation = splits["validation"]
  logits = predict_logits(exp.spec, ckpts[-1][0], exp.frozen, validation, mesh=exp.mesh)
  predicted = {int(i): int(p) for i, p in zip(validation["example_id"], logits.argmax(-1))}
  query_rows = select_queries(validation, logits, queries)
  if len(query_rows["label"]) == 0:
    raise UserError(f"--queries={queries}: no validation example selected "
                    "(the model may get every one right)")
  result = tracin.tracin_scores(exp.spec.example_losses, ckpts, exp.frozen,
                                batches_lib.iterate_batches(train, 32),
                                batches_lib.iterate_batches(query_rows, 32),
                                top_k=min(top_k, len(train["label"])), mesh=exp.mesh,
                                progress=progress)
  names = exp.data.label_names
  train_row = {int(i): n for n, i in enumerate(train["example_id"])}
  query_row = {int(i): n for n, i in enumerate(query_rows["example_id"])}

  def described(ids, scores):
    return [{"example_id": int(i), "text": str(train["text"][train_row[int(i)]]),
             "label": names[int(train["label"][train_row[int(i)]])], "score": float(s)}
            for i, s in zip(ids, scores) if int(i) in train_row]

  records = []
  for m, qid in enumerate(result.query_ids):
    row = query_row[int(qid)]
    records.append({"example_id": int(qid), "text": str(query_rows["text"][row]),
                    "label": names[int(query_rows["label"][row])],
                    "predicted": names[predicted[int(qid)]],
                    "proponents": described(result.proponent_ids[m], result.proponent_scores[m]),
                    "opponents": described(result.opponent_ids[m], result.opponent_scores[m])})
  out_dir = files.join(round_dir, "influence")
  files.makedirs(out_dir)
  safe = queries.replace(":", "_").replace(",", "-")[:60]
  path = files.join(out_dir, f"{safe}_top{top_k}.jsonl")
  files.write_text(path, "".join(files.dumps_json(rec, indent=None) + "\n" for rec in records))
  print(format_records(records))
  print(f"influence: {path}")
  return path


def format_records(records: list[dict], width: int = 70, max_queries: int = 10) -> str:
  short = lambda t: textwrap.shorten(t, width=width, placeholder="...")
  lines = []
  for rec in records[:max_queries]:
    lines.append(f"query {rec['example_id']} [label {rec['label']}, predicted {rec['predicted']}]: "
                 f"{short(rec['text'])}")
    for kind in ("opponents", "proponents"):
      for item in rec[kind]:
        lines.append(f"  {kind[:-1]:<9} {item['score']:+.4f}  [{item['label']}] {short(item['text'])}")
  if len(records) > max_queries:
    lines.append(f"... {len(records) - max_queries} more queries in the JSONL file")
  return "\n".join(lines)
