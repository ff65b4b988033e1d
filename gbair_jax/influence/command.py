"""`gbair influence`: the top TracIn proponents and opponents of chosen queries.

Reads a finished round of a run (its gin config, checkpoints and ledger), scores the
training set as it was labeled in that round, writes
`<run>/round_<r>/influence/<queries>_top<k>.jsonl` and prints a readable table.

Queries: validation examples (`misclassified`, `validation`, `ids:1,2,3`), or the round's
`suspects`: the training examples the strategy selected (from `proposals.json` of a round
paused for review, else `suspects.jsonl`), each at its current label, whose proponents
and opponents are the other training examples (never itself), and whose record also holds
`opposed_validation`: the validation examples it opposes most (negative TracIn at their
correct labels). One record per query, in the format

  {"example_id", "text", "label", "predicted",
   "proponents": [{"example_id", "text", "label", "score"}, ...], "opponents": [...]}
"""
from __future__ import annotations

import json
import os
import textwrap
from typing import Sequence

import jax
import numpy as np

from gbair_jax import config
from gbair_jax.data.ledger import apply_ledger, read_ledger
from gbair_jax.errors import UserError
from gbair_jax.influence import distributed, tracin
from gbair_jax.train import batches as batches_lib
from gbair_jax.train import checkpoints
from gbair_jax.train.experiment import CONFIG_FILE, build_experiment
from gbair_jax.train.trainer import predict_logits

BATCH_SIZE = 32
SUSPECTS = "suspects"


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
    raise UserError(f"--queries={queries}: expected misclassified, validation, suspects or "
                    "ids:1,2,3")
  return {k: v[keep] for k, v in validation.items()}


def _stream(arrays: dict, per_host: bool = False):
  """Batches for TracIn: shortest texts first with trimmed padding on one process; one
  shape on several, where each scores its share of the pool (`per_host`)."""
  if jax.process_count() > 1:
    stream = batches_lib.iterate_batches(arrays, BATCH_SIZE)
    return distributed.host_shard(stream) if per_host else stream
  return batches_lib.iterate_batches(arrays, BATCH_SIZE, batches_lib.length_order(arrays),
                                     trim_multiple=batches_lib.TRIM_MULTIPLE)


def influence_records(spec, frozen, ckpts, pool: dict, queries: dict, label_names: Sequence[str],
                      predicted: np.ndarray, top_k: int, exclude_self: bool = False,
                      progress: bool = True) -> list[dict]:
  """One influence record per query row (in the rows' order): its top-k proponents and
  opponents in `pool`, each at its label in `pool`.

  Args:
    spec, frozen, ckpts: the classifier, its frozen weights and the round's checkpoints.
    pool: the split whose examples are ranked (the training set, or validation).
    queries: the query rows, each at its own label.
    predicted: the model's predicted class per query row.
    exclude_self: leave a query out of its own lists (queries drawn from `pool`).
  """
  num_pool = len(pool["label"])
  wanted = min(top_k + (1 if exclude_self else 0), num_pool)
  result = tracin.tracin_scores(spec.example_losses, ckpts, frozen, _stream(pool, per_host=True),
                                _stream(queries), top_k=wanted, progress=progress)
  pool_row = {int(i): n for n, i in enumerate(pool["example_id"])}
  lists = {int(q): m for m, q in enumerate(result.query_ids)}

  def described(ids, scores, query_id):
    items = [{"example_id": int(i), "text": str(pool["text"][pool_row[int(i)]]),
              "label": label_names[int(pool["label"][pool_row[int(i)]])], "score": float(s)}
             for i, s in zip(ids, scores)
             if int(i) in pool_row and not (exclude_self and int(i) == query_id)]
    return items[:top_k]

  records = []
  for row, qid in enumerate(queries["example_id"]):
    qid = int(qid)
    m = lists[qid]
    records.append({
        "example_id": qid, "text": str(queries["text"][row]),
        "label": label_names[int(queries["label"][row])],
        "predicted": label_names[int(predicted[row])],
        "proponents": described(result.proponent_ids[m], result.proponent_scores[m], qid),
        "opponents": described(result.opponent_ids[m], result.opponent_scores[m], qid)})
  return records


def suspect_records(spec, frozen, ckpts, train: dict, validation: dict, suspect_ids,
                    train_logits: np.ndarray, label_names: Sequence[str], top_k: int,
                    progress: bool = True) -> list[dict]:
  """Records of the suspects (training examples at their current label, in the order of
  `suspect_ids`): proponents and opponents among the other training examples, plus
  `opposed_validation`, the validation examples each one opposes most."""
  row_of = {int(i): n for n, i in enumerate(train["example_id"])}
  missing = [int(i) for i in suspect_ids if int(i) not in row_of]
  if missing:
    raise UserError(f"suspects {missing[:5]} are not in the training set of this round")
  rows = np.array([row_of[int(i)] for i in suspect_ids], np.int64)
  if rows.size == 0:
    return []
  queries = {k: v[rows] for k, v in train.items()}
  predicted = np.asarray(train_logits)[rows].argmax(-1)
  records = influence_records(spec, frozen, ckpts, train, queries, label_names, predicted,
                              top_k, exclude_self=True, progress=progress)
  opposed = influence_records(spec, frozen, ckpts, validation, queries, label_names, predicted,
                              top_k, progress=progress)
  for record, against in zip(records, opposed):
    record["opposed_validation"] = against["opponents"]
  return records


def write_records(path: str, records: list[dict]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for rec in records:
      f.write(json.dumps(rec) + "\n")
  os.replace(tmp, path)


def records_path(round_dir: str, queries: str, top_k: int) -> str:
  safe = queries.replace(":", "_").replace(",", "-")[:60]
  return os.path.join(round_dir, "influence", f"{safe}_top{top_k}.jsonl")


def round_suspect_ids(round_dir: str) -> list[int]:
  """The round's suspects, best first: from proposals.json (a round paused for review),
  else from suspects.jsonl (the changes the round applied)."""
  from gbair_jax.review import proposals as proposals_lib  # pylint: disable=g-import-not-at-top
  proposals = proposals_lib.read_proposals(round_dir)
  if proposals is not None:
    return [int(s["example_id"]) for s in proposals["suspects"]]
  path = os.path.join(round_dir, "suspects.jsonl")
  if not os.path.exists(path):
    raise UserError(f"{round_dir}: no suspects (neither {proposals_lib.FILE_NAME} nor "
                    "suspects.jsonl): the round selected none, or has not been scored yet")
  with open(path) as f:
    return [int(json.loads(line)["example_id"]) for line in f if line.strip()]


def run(output_dir: str, round_index: int, queries: str = "misclassified", top_k: int = 5,
        progress: bool = True) -> str:
  round_dir = os.path.join(output_dir, f"round_{round_index}")
  config_path = os.path.join(output_dir, CONFIG_FILE)
  if not os.path.exists(config_path):
    raise UserError(f"{config_path}: not found; --output_dir must be a run written by "
                    "`gbair train` or `gbair run`")
  ckpts = checkpoints.load_tracin_checkpoints(round_dir)
  if not ckpts:
    raise UserError(f"{round_dir}: no finished epoch checkpoints for --round={round_index}")
  if top_k < 1:
    raise UserError(f"--top_k must be >= 1, got {top_k}")
  suspect_ids = round_suspect_ids(round_dir) if queries == SUSPECTS else None
  config.parse_gin([config_path])
  exp = build_experiment()
  splits = exp.tokenized_splits()
  train = apply_ledger(splits["train"], read_ledger(os.path.join(output_dir, "ledger.jsonl")),
                       before_round=round_index)
  validation = splits["validation"]
  names = exp.data.label_names
  if queries == SUSPECTS:
    if not suspect_ids:
      raise UserError(f"--queries=suspects: round {round_index} selected no suspect")
    train_logits = predict_logits(exp.spec, ckpts[-1][0], exp.frozen, train)
    records = suspect_records(exp.spec, exp.frozen, ckpts, train, validation, suspect_ids,
                              train_logits, names, top_k, progress=progress)
  else:
    logits = predict_logits(exp.spec, ckpts[-1][0], exp.frozen, validation)
    query_rows = select_queries(validation, logits, queries)
    if len(query_rows["label"]) == 0:
      raise UserError(f"--queries={queries}: no validation example selected "
                      "(the model may get every one right)")
    keep = np.isin(validation["example_id"], query_rows["example_id"])
    records = influence_records(exp.spec, exp.frozen, ckpts, train, query_rows, names,
                                logits[keep].argmax(-1), top_k, progress=progress)
  path = records_path(round_dir, queries, top_k)
  if distributed.is_primary():
    write_records(path, records)
  print(format_records(records))
  print(f"influence: {path}")
  return path


def format_records(records: list[dict], width: int = 70, max_queries: int = 10) -> str:
  short = lambda t: textwrap.shorten(t, width=width, placeholder="...")
  lines = []
  for rec in records[:max_queries]:
    lines.append(f"query {rec['example_id']} [label {rec['label']}, predicted {rec['predicted']}]: "
                 f"{short(rec['text'])}")
    for kind in ("opposed_validation", "opponents", "proponents"):
      tag = "opposes" if kind == "opposed_validation" else kind[:-1]
      for item in rec.get(kind, []):
        lines.append(f"  {tag:<9} {item['score']:+.4f}  [{item['label']}] {short(item['text'])}")
  if len(records) > max_queries:
    lines.append(f"... {len(records) - max_queries} more queries in the JSONL file")
  return "\n".join(lines)
