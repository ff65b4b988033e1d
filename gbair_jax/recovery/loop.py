"""The G-BAIR round loop: train -> evaluate -> score -> select -> act -> ledger, repeated.

Round r trains on the source labels + corruption + ledger entries of rounds < r. Every
round ends by writing `round_<r>/round.json`; a rerun of the same command skips finished
rounds and finished epochs, so a killed run ends with the same ledger and report.

With `review=True` (`gbair run --review`) a recovery round stops after selection, before
any label changes, and leaves `round_<r>/proposals.json` plus the evidence for
`gbair review`; the reviewer's decisions become the round's ledger lines, and rerunning
the command goes on from there (gbair_jax/review/).
"""
from __future__ import annotations

import json
import os
import time

import gin
import numpy as np

from gbair_jax.data import ledger as ledger_lib
from gbair_jax.data.ledger import append_ledger, apply_ledger, read_ledger
from gbair_jax.errors import UserError
from gbair_jax.influence import distributed
from gbair_jax.recovery import actions
from gbair_jax.recovery.context import RoundContext
from gbair_jax.recovery import tracin_strategies  # noqa: F401  (registers G-BAIR strategies)
from gbair_jax.recovery.strategies import get_strategy
from gbair_jax.report import writer as report_writer
from gbair_jax.review import decisions as review_decisions
from gbair_jax.review import proposals as review_proposals
from gbair_jax.review import rounds as review_rounds
from gbair_jax.train import checkpoints
from gbair_jax.train.experiment import Experiment, build_experiment, claim_output_dir
from gbair_jax.train.trainer import predict_logits, train_prompt

LEDGER_FILE = ledger_lib.FILE_NAME
RETRAIN_MODES = ("fresh", "warm_start")
REFERENCES = ("clean", "no_recovery")


def _write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def train_only(output_dir: str) -> dict:
  """`gbair train`: round 0 only, no scoring; returns round_0/metrics.json's content."""
  claim_output_dir(output_dir, gin.config_str())
  exp = build_experiment()
  splits = exp.tokenized_splits()
  result = train_prompt(exp.spec, exp.frozen, splits, os.path.join(output_dir, "round_0"))
  print(f"test: {json.dumps(result.metrics.get('test', {}))}")
  print(f"metrics: {os.path.join(output_dir, 'round_0', 'metrics.json')}")
  return result.metrics


def label_quality(train_source: dict, entries: list, through_round: int) -> dict:
  """Wrong labels left after the ledger entries of rounds <= through_round."""
  current = apply_ledger(train_source, entries, before_round=through_round + 1)
  wrong = current["label"] != current["original_label"]
  # Changed = relabeled or removed (a reviewer's reject is a ledger line that changes nothing).
  now = dict(zip(current["example_id"].tolist(), current["label"].tolist()))
  changed_ids = [i for i, label in zip(train_source["example_id"].tolist(),
                                       train_source["label"].tolist()) if now.get(i) != label]
  corrupted_ids = train_source["example_id"][train_source["is_corrupted"]]
  found = np.isin(corrupted_ids, changed_ids).sum() if changed_ids else 0
  return {"corrupted_remaining": int(np.sum(wrong & current["is_corrupted"])),
          "wrong_labels": int(wrong.sum()),
          "recall_cumulative": float(found / max(len(corrupted_ids), 1))}


@gin.configurable(denylist=["output_dir", "experiment", "review", "resume_command"])
def run(output_dir: str, num_rounds: int = 2, strategy: str = "tracin_opponents",
        action: str = "relabel", retrain: str = "fresh",
        references: tuple | None = ("clean", "no_recovery"), progress: bool = True,
        experiment: Experiment | None = None, review: bool = False,
        resume_command: str | None = None) -> dict:
  """Runs G-BAIR rounds 0..num_rounds (the last one only trains and evaluates).

  Args:
    output_dir: the run's directory (refused if it holds a different config).
    num_rounds: recovery rounds (select + act); the run trains num_rounds + 1 times.
    strategy: selection strategy name (tracin_opponents, loss, self_influence, random,
      confident_learning, ...).
    action: relabel | remove.
    retrain: fresh (new prompt each round) | warm_start (continue from the last prompt).
    references: which reference results to add to the report: "clean" trains once on the
      uncorrupted labels; "no_recovery" is round 0 (same config, no label changed).
    review: pause a recovery round after selection for `gbair review` and return
      {"paused_for_review": r, "proposals": path}; not part of the config. A round whose
      ledger holds human decisions goes on with them (with or without `review`).
    resume_command: the command line to show the reviewer (for the page's summary).
  """
  references = ("clean", "no_recovery") if references is None else tuple(references)
  if retrain not in RETRAIN_MODES:
    raise UserError(f"run.retrain='{retrain}' is unknown (expected fresh or warm_start)")
  if action not in actions.ACTIONS:
    raise UserError(f"run.action='{action}' is unknown (expected relabel or remove)")
  for ref in references:
    if ref not in REFERENCES:
      raise UserError(f"run.references: unknown '{ref}' (expected clean and/or no_recovery)")
  if num_rounds < 0:
    raise UserError(f"run.num_rounds must be >= 0, got {num_rounds}")
  strategy_fn = get_strategy(strategy)  # fail before any work on an unknown name
  primary = distributed.is_primary()  # several processes: all compute, process 0 writes
  progress = progress and primary
  claim_output_dir(output_dir, gin.config_str() + f"\n# strategy: {strategy}\n")
  exp = experiment or build_experiment()
  splits = exp.tokenized_splits()
  train_source = splits["train"]
  selection_count = actions.selection_size(len(train_source["label"]))
  ledger_path = os.path.join(output_dir, LEDGER_FILE)

  rounds: list[dict] = []
  previous_prompt = None
  for r in range(num_rounds + 1):
    round_dir = os.path.join(output_dir, f"round_{r}")
    summary_path = os.path.join(round_dir, "round.json")
    if os.path.exists(summary_path):  # finished before a kill: reuse it
      summary = _read_json(summary_path)
      rounds.append(summary)
      last_epoch = checkpoints.list_checkpoints(round_dir)[-1].epoch
      previous_prompt = checkpoints.load_prompt(round_dir, last_epoch)
      if summary["selected"] == 0 and r < num_rounds:
        break
      continue

    entries = read_ledger(ledger_path)
    proposals = review_proposals.read_proposals(round_dir) if r < num_rounds else None
    decided = [e for e in entries if e.round == r]
    if proposals is not None:  # paused for review before
      if review and not decided and not review_decisions.is_closed(output_dir, r):
        return {"paused_for_review": r, "proposals": review_proposals.proposals_path(round_dir)}
      if primary:  # going on: no decision may land after the ledger is read
        review_decisions.close_review(output_dir, r)
      distributed.barrier(f"review of round {r} closed")
      entries = read_ledger(ledger_path)
      decided = [e for e in entries if e.round == r]
    train = apply_ledger(train_source, entries, before_round=r)
    started = time.time()
    result = train_prompt(exp.spec, exp.frozen, {**splits, "train": train}, round_dir,
                          initial_prompt=previous_prompt if retrain == "warm_start" else None,
                          progress=progress)
    train_seconds = time.time() - started
    previous_prompt = result.prompt
    summary = {"round": r, "label_names": list(exp.data.label_names),
               "num_train": int(len(train["label"])), "selected": 0,
               "precision": None,
               "validation": result.metrics["epochs"][-1].get("validation", {}),
               "test": result.metrics.get("test", {}),
               "seconds": {"train": train_seconds, "score": 0.0}}

    reviewed = proposals is not None and any(review_decisions.is_human(e) for e in decided)
    if r < num_rounds and reviewed:  # the reviewer's decisions are this round's changes
      summary.update(review_rounds.reviewed_round(round_dir, proposals, entries, train,
                                                  train_source, write=primary))
    elif r < num_rounds:
      started = time.time()
      ctx = RoundContext(
          spec=exp.spec, frozen=exp.frozen, train=train, validation=splits["validation"],
          checkpoints=checkpoints.load_tracin_checkpoints(round_dir), final_prompt=result.prompt,
          train_logits=predict_logits(exp.spec, result.prompt, exp.frozen, train),
          validation_logits=predict_logits(exp.spec, result.prompt, exp.frozen, splits["validation"]),
          seed=r, progress=progress)
      scores = strategy_fn(ctx)
      changed = np.isin(train["example_id"], [e.example_id for e in entries])
      selected = actions.select_suspects(scores, selection_count, exclude=changed)
      new_entries = actions.act(action, selected, train, ctx.train_logits, scores, r, strategy)
      if review and len(selected) and proposals is None and not decided:
        path = review_rounds.pause_for_review(
            round_dir, ctx, selected, new_entries, scores, exp.data.label_names, round_index=r,
            strategy=strategy, action=action, resume_command=resume_command,
            seconds={"train": train_seconds, "score": time.time() - started})
        distributed.barrier(f"proposals of round {r}")
        return {"paused_for_review": r, "proposals": path}
      # Idempotent: a kill between the ledger append and round.json must not append twice.
      if primary and not any(e.round == r for e in entries):
        report_writer.write_suspects(os.path.join(round_dir, "suspects.jsonl"), new_entries,
                                     train, exp.data.label_names)
        append_ledger(ledger_path, new_entries)
      summary["selected"] = len(selected)
      summary["precision"] = (float(np.mean(train["is_corrupted"][selected]))
                              if len(selected) else None)
      summary["num_misclassified_validation"] = int(len(ctx.misclassified["label"]))
      summary["seconds"]["score"] = time.time() - started
    distributed.barrier(f"ledger of round {r}")  # all read what process 0 appended
    summary.update(label_quality(train_source, read_ledger(ledger_path), r))
    if primary:
      _write_json(summary_path, summary)
    distributed.barrier(f"round {r} done")
    rounds.append(summary)
    if progress:
      print(report_writer.format_round(summary), flush=True)
    if summary["selected"] == 0 and r < num_rounds:
      break  # nothing left to change: later rounds would repeat this one

  report = {
      "config": gin.operative_config_str(),
      "task": exp.data.task,
      "label_names": list(exp.data.label_names),
      "strategy": strategy,
      "action": action,
      "num_train": int(len(train_source["label"])),
      "num_corrupted": int(train_source["is_corrupted"].sum()),
      "rounds": rounds,
      "references": _references(exp, splits, output_dir, references, rounds, progress),
  }
  if primary:
    report_writer.write_report(output_dir, report, exp.data.label_names)
  if progress:
    print(report_writer.format_table(report))
    print(f"report: {os.path.join(output_dir, 'report.md')}")
  return report


def _references(exp: Experiment, splits: dict, output_dir: str, references: tuple,
                rounds: list[dict], progress: bool) -> dict:
  out = {}
  if "clean" in references:
    clean_dir = os.path.join(output_dir, "references", "clean")
    train = dict(splits["train"])
    train["label"] = train["original_label"].copy()
    metrics_path = os.path.join(clean_dir, "metrics.json")
    if os.path.exists(metrics_path):
      metrics = _read_json(metrics_path)
    else:
      metrics = train_prompt(exp.spec, exp.frozen, {**splits, "train": train}, clean_dir,
                             progress=progress).metrics
    out["clean"] = {"test": metrics.get("test", {}),
                    "validation": metrics["epochs"][-1].get("validation", {})}
  if "no_recovery" in references:
    out["no_recovery"] = {"test": rounds[0]["test"], "validation": rounds[0]["validation"],
                          "note": "round 0 of this run: same config, no label changed"}
  return out

