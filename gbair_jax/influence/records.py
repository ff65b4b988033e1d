"""TracIn influence records: the top proponents and opponents of chosen queries, as the
`gbair influence` command and the review page read them.

Queries are validation examples at their correct labels, or training examples (a round's
suspects) at their current labels, whose lists then leave the query itself out and whose
record also holds `opposed_validation`. One record per query:

  {"example_id", "text", "label", "predicted",
   "proponents": [{"example_id", "text", "label", "score"}, ...], "opponents": [...]}
"""
from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np

from gbair_jax.errors import UserError
from gbair_jax.influence import tracin
from gbair_jax.runtime import files
from gbair_jax.train import batches as batches_lib

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


def _stream(arrays: dict, batch_size: int):
  """Global batches, shortest texts first with trimmed padding (records are keyed by example
  id): every process iterates the same ones and the mesh splits each over `data`."""
  return batches_lib.iterate_batches(arrays, batch_size, batches_lib.length_order(arrays),
                                     trim_multiple=batches_lib.TRIM_MULTIPLE)


def influence_records(spec, frozen, ckpts, pool: dict, queries: dict, label_names: Sequence[str],
                      predicted: np.ndarray, top_k: int, exclude_self: bool = False,
                      mesh=None, batch_size: int = 32, progress: bool = True) -> list[dict]:
  """One influence record per query row (in the rows' order): its top-k proponents and
  opponents in `pool`, each at its label in `pool`.

  Args:
    spec, frozen, ckpts: the classifier, its frozen weights and the round's checkpoints.
    pool: the split whose examples are ranked (the training set, or validation).
    queries: the query rows, each at its own label.
    predicted: the model's predicted class per query row.
    exclude_self: leave a query out of its own lists (queries drawn from `pool`).
    mesh: the experiment's mesh (None: one device).
    batch_size: rows per TracIn batch (global, split over the mesh's `data` axis).
  """
  num_pool = len(pool["label"])
  wanted = min(top_k + (1 if exclude_self else 0), num_pool)
  result = tracin.tracin_scores(spec.example_losses, ckpts, frozen,
                                _stream(pool, batch_size),
                                _stream(queries, batch_size), top_k=wanted, mesh=mesh,
                                progress=progress)
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
                    mesh=None, batch_size: int = 32, progress: bool = True) -> list[dict]:
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
                              top_k, exclude_self=True, mesh=mesh, batch_size=batch_size,
                              progress=progress)
  opposed = influence_records(spec, frozen, ckpts, validation, queries, label_names, predicted,
                              top_k, mesh=mesh, batch_size=batch_size, progress=progress)
  for record, against in zip(records, opposed):
    record["opposed_validation"] = against["opponents"]
  return records


def write_records(path: str, records: list[dict]) -> None:
  """One JSON record per line, written whole (runtime/files.py)."""
  files.makedirs(files.dirname(path))
  files.write_text(path, "".join(files.dumps_json(rec, indent=None) + "\n" for rec in records))


def records_path(round_dir: str, queries: str, top_k: int) -> str:
  safe = queries.replace(":", "_").replace(",", "-")[:60]
  return files.join(round_dir, "influence", f"{safe}_top{top_k}.jsonl")


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
