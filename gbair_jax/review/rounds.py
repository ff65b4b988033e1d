"""The two ends of a review in the round loop: pausing a round (proposals + evidence) and
going on with the reviewer's decisions. The file formats are in proposals.py."""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from gbair_jax.data.ledger import LedgerEntry
from gbair_jax.influence import records as records_lib
from gbair_jax.report import writer as report_writer
from gbair_jax.review import decisions as decisions_lib
from gbair_jax.review import score as score_lib
from gbair_jax.review.proposals import EVIDENCE_TOP_K, proposals_path
from gbair_jax.runtime import files
from gbair_jax.runtime import process
from gbair_jax.train.metrics import softmax


def suspect_rows(train: dict, selected: np.ndarray, entries, scores: np.ndarray,
                 train_logits: np.ndarray, label_names: Sequence[str]) -> list[dict]:
  """One row per selected training example, best first (`entries` = the automatic action)."""
  probabilities = softmax(np.asarray(train_logits, np.float64))
  rows = []
  for rank, (i, entry) in enumerate(zip(selected, entries), start=1):
    rows.append({
        "rank": rank, "example_id": int(train["example_id"][i]), "text": str(train["text"][i]),
        "label": label_names[int(train["label"][i])],
        "proposed": None if entry.new_label is None else label_names[int(entry.new_label)],
        "predicted": label_names[int(probabilities[i].argmax())],
        "probabilities": [round(float(p), 6) for p in probabilities[i]],
        "score": float(scores[i])})
  return rows


def pause_for_review(round_dir: str, ctx, selected: np.ndarray, entries, scores: np.ndarray,
                     label_names: Sequence[str], *, round_index: int, strategy: str, action: str,
                     seconds: dict, resume_command: str | None,
                     top_k: int = EVIDENCE_TOP_K) -> str:
  """Computes the evidence (every process takes part) and writes it and proposals.json
  (process 0). Returns proposals.json's path."""
  started = time.time()
  suspects = suspect_rows(ctx.train, selected, entries, scores, ctx.train_logits, label_names)
  ids = [s["example_id"] for s in suspects]
  spec, frozen, ckpts = ctx.spec, ctx.frozen, ctx.checkpoints
  suspect_records = records_lib.suspect_records(
      spec, frozen, ckpts, ctx.train, ctx.validation, ids, ctx.train_logits, label_names, top_k,
      mesh=ctx.mesh, progress=ctx.progress)
  misclassified = ctx.misclassified
  misclassified_records = []
  if len(misclassified["label"]):
    wrong = ctx.validation_logits.argmax(-1) != ctx.validation["label"]
    misclassified_records = records_lib.influence_records(
        spec, frozen, ckpts, ctx.train, misclassified, label_names,
        ctx.validation_logits[wrong].argmax(-1), top_k, mesh=ctx.mesh, progress=ctx.progress)
  path = proposals_path(round_dir)
  if process.is_primary():
    records_lib.write_records(
        records_lib.records_path(round_dir, "suspects", top_k), suspect_records)
    records_lib.write_records(
        records_lib.records_path(round_dir, "misclassified", top_k), misclassified_records)
    proposals = {"round": int(round_index), "strategy": strategy, "action": action,
                 "label_names": list(label_names), "resume_command": resume_command,
                 "num_train": int(len(ctx.train["label"])),
                 "num_misclassified_validation": int(len(misclassified["label"])),
                 "seconds": {**seconds, "evidence": time.time() - started},
                 "suspects": suspects}
    files.write_json(path, proposals)
  return path


def reviewed_round(round_dir: str, proposals: dict, entries, train: dict, train_source: dict,
                   write: bool = True) -> dict:
  """round.json fields of a round whose changes are the reviewer's decisions; writes its
  suspects.jsonl (one line per decided example: label before the round -> after)."""
  r = int(proposals["round"])
  row_of = {int(i): n for n, i in enumerate(train["example_id"])}
  suspects = proposals["suspects"]
  selected = np.array([row_of[int(s["example_id"])] for s in suspects], np.int64)
  states = decisions_lib.round_decisions(entries, r)
  if write:
    score_of = {int(s["example_id"]): float(s["score"]) for s in suspects}
    decided = [LedgerEntry(round=r, example_id=i, old_label=int(train["label"][row_of[i]]),
                           new_label=state["label"], score=score_of.get(i),
                           strategy=f"{decisions_lib.HUMAN}:{state['decision']}")
               for i, state in states.items()]
    report_writer.write_suspects(files.join(round_dir, "suspects.jsonl"), decided, train,
                                 proposals["label_names"])
  return {"selected": len(selected),
          "removed": sum(state["label"] is None for state in states.values()),  # dropped
          "precision": float(np.mean(train["is_corrupted"][selected])) if len(selected) else None,
          "num_misclassified_validation": proposals["num_misclassified_validation"],
          "seconds": dict(proposals["seconds"]),
          "review": score_lib.score_round(train_source, entries, r, proposals)}
