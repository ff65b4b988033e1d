"""The G-BAIR round loop: train -> evaluate -> score -> select -> act -> ledger, repeated.

Round r trains on the source labels + corruption + ledger entries of rounds < r. Every
round ends by writing `round_<r>/round.json`; a rerun of the same command skips finished
rounds and finished epochs, so a killed run ends with the same ledger and report. The run
directory is locked while a command writes it, and the ledger is checked on every start.

With `review=True` (`gbair run --review`) a recovery round stops after selection, before
any label changes, and leaves `round_<r>/proposals.json` plus the evidence for
`gbair review`; the reviewer's decisions become the round's ledger lines, and rerunning
the command goes on from there (gbair_jax/review/).
"""
from __future__ import annotations

import io
import re
import sys
import time

import gin
import numpy as np

from gbair_jax.data import describe as describe_lib
from gbair_jax.data import ledger as ledger_lib
from gbair_jax.data.ledger import apply_ledger, read_ledger
from gbair_jax.errors import UserError
from gbair_jax.recovery import actions
from gbair_jax.recovery.context import RoundContext
# The built-in strategies register themselves (and their gin configurables) on import.
from gbair_jax.recovery import gradient_vote  # noqa: F401  pylint: disable=unused-import
from gbair_jax.recovery import strategies  # noqa: F401  pylint: disable=unused-import
from gbair_jax.recovery import tracin_strategies
from gbair_jax.recovery import training_dynamics  # noqa: F401  pylint: disable=unused-import
from gbair_jax.recovery.registry import get_strategy
from gbair_jax.report import writer as report_writer
from gbair_jax.review import decisions as review_decisions
from gbair_jax.review import proposals as review_proposals
from gbair_jax.review import rounds as review_rounds
from gbair_jax.runtime import files
from gbair_jax.runtime import process as distributed
from gbair_jax.train import checkpoints
from gbair_jax.train.experiment import (Experiment, build_experiment, check_output_dir_free,
                                        claim_output_dir)
from gbair_jax.train.trainer import predict_logits, train_prompt

LEDGER_FILE = ledger_lib.FILE_NAME
RETRAIN_MODES = ("fresh", "warm_start")
REFERENCES = ("clean", "no_recovery")
_ROUND_DIR = re.compile(r"round_(\d+)")


SCORES_FILE = "scores.npz"


def save_scores(path: str, example_ids: np.ndarray, scores: np.ndarray) -> None:
  """One round's strategy scores for every training example (written whole)."""
  buffer = io.BytesIO()
  np.savez(buffer, example_id=np.asarray(example_ids, np.int64),
           score=np.asarray(scores, np.float64))
  files.write_bytes(path, buffer.getvalue())


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


def normalize_references(references) -> tuple[str, ...]:
  """`run.references` as a tuple of names: None or () means none, a string means one."""
  if references is None:
    return ()
  if isinstance(references, str):
    references = (references,)
  references = tuple(references)
  for ref in references:
    if ref not in REFERENCES:
      raise UserError(f"run.references: unknown {ref!r} (expected clean and/or no_recovery, "
                      "or None for none)")
  return references


@gin.configurable(denylist=["output_dir", "experiment", "review", "resume_command"])
def run(output_dir: str, num_rounds: int = 2, strategy: str = "tracin_opponents",
        action: str = "relabel", retrain: str = "fresh",
        references: tuple | None = ("clean", "no_recovery"), progress: bool = True,
        experiment: Experiment | None = None, review: bool = False,
        resume_command: str | None = None) -> dict:
  """Runs G-BAIR rounds 0..num_rounds (the last one only trains and evaluates).

  Args:
    output_dir: the run's directory (refused if it holds a different config or data, or
      another process writes it).
    num_rounds: recovery rounds (select + act); the run trains num_rounds + 1 times.
    strategy: selection strategy name (tracin_opponents, loss, self_influence, random,
      confident_learning, ...).
    action: relabel | remove.
    retrain: fresh (new prompt each round) | warm_start (continue from the last prompt).
    references: which reference results to add to the report: "clean" trains once on the
      uncorrupted labels; "no_recovery" is round 0 (same config, no label changed).
      None or () adds none.
    review: pause a recovery round after selection for `gbair review` and return
      {"paused_for_review": r, "proposals": path}; not part of the config. A round whose
      ledger holds human decisions goes on with them (with or without `review`).
    resume_command: the command line to show the reviewer (for the page's summary).
  """
  references = normalize_references(references)
  if retrain not in RETRAIN_MODES:
    raise UserError(f"run.retrain='{retrain}' is unknown (expected fresh or warm_start)")
  if action not in actions.ACTIONS:
    raise UserError(f"run.action='{action}' is unknown (expected relabel or remove)")
  if num_rounds < 0:
    raise UserError(f"run.num_rounds must be >= 0, got {num_rounds}")
  strategy_fn = get_strategy(strategy)  # fail before any work on an unknown name
  primary = distributed.is_primary()  # several processes: all compute, process 0 writes
  progress = progress and primary
  check_output_dir_free(output_dir)  # refused at once, not after loading the data
  checkpoints.checkpoint_dir(files.join(output_dir, "round_0"))  # refused before any work
  # Everything the user gave is checked before output_dir is touched: a refused command
  # writes nothing, and the corrected one can use the same directory.
  exp = experiment or build_experiment()
  splits = exp.tokenized_splits()
  train_source = splits["train"]
  selection_count = actions.selection_size(len(train_source["label"]))
  if progress:
    for line in describe_lib.format_rows_read(exp.data.rows_read):
      print(line, flush=True)
  config_text = gin.config_str() + f"\n# strategy: {strategy}\n"
  with claim_output_dir(output_dir, config_text, exp.data):
    rounds = _rounds(output_dir, exp, splits, num_rounds, strategy, strategy_fn, action,
                     retrain, selection_count, primary, progress, review, resume_command)
    if isinstance(rounds, dict):  # paused for review: no report until the run goes on
      return rounds
    report = {
        # The config recorded when the directory was claimed: the same in every rerun.
        "config": config_text,
        "task": exp.data.task,
        "label_names": list(exp.data.label_names),
        "strategy": strategy,
        "action": action,
        "num_train": int(len(train_source["label"])),
        "num_corrupted": int(train_source["is_corrupted"].sum()),
        "rounds": rounds,
        "references": _references(exp, splits, output_dir, references, rounds, progress),
        **exp.runtime(),  # mesh shape, device kind, number of processes
    }
    if primary:
      report_writer.write_report(output_dir, report, exp.data.label_names)
  if progress:
    print(report_writer.format_table(report))
    print(f"report: {files.join(output_dir, 'report.md')}")
  return report


def _rounds(output_dir: str, exp: Experiment, splits: dict, num_rounds: int, strategy: str,
            strategy_fn, action: str, retrain: str, selection_count: int, primary: bool,
            progress: bool, review: bool = False,
            resume_command: str | None = None) -> list[dict] | dict:
  """Rounds 0..num_rounds, each reused from round.json when finished; their summaries (or
  {"paused_for_review": r, "proposals": path} when a round pauses for review)."""
  train_source = splits["train"]
  ledger_path = files.join(output_dir, LEDGER_FILE)
  checked_ledger(output_dir, train_source, primary)
  rounds: list[dict] = []
  previous_prompt = None
  for r in range(num_rounds + 1):
    round_dir = files.join(output_dir, f"round_{r}")
    summary_path = files.join(round_dir, "round.json")
    if files.exists(summary_path):  # finished before a kill: reuse it
      summary = files.read_json(summary_path)
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
    hook = (tracin_strategies.in_run_hook(strategy, exp.spec, splits["validation"])
            if r < num_rounds else None)  # tracin.source = "in_run": scored while training
    result = train_prompt(exp.spec, exp.frozen, {**splits, "train": train}, round_dir,
                          initial_prompt=previous_prompt if retrain == "warm_start" else None,
                          progress=progress, mesh=exp.mesh, in_run=hook)
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
      validation_logits = predict_logits(exp.spec, result.prompt, exp.frozen, splits["validation"],
                                         mesh=exp.mesh)
      own = [e for e in entries if e.round == r]
      if own:
        # Killed after this round's ledger append and before round.json (or between the
        # append and the barrier of several processes): the ledger is the round's record.
        # Selecting again would exclude these very entries and pick other examples.
        row_of = {int(i): n for n, i in enumerate(train["example_id"])}
        selected = np.array([row_of[e.example_id] for e in own], np.int64)
        suspects_path = files.join(round_dir, "suspects.jsonl")
        if primary and not files.exists(suspects_path):
          report_writer.write_suspects(suspects_path, own, train, exp.data.label_names)
      else:
        ctx = RoundContext(
            spec=exp.spec, frozen=exp.frozen, train=train, validation=splits["validation"],
            checkpoints=checkpoints.load_tracin_checkpoints(round_dir),
            final_prompt=result.prompt,
            train_logits=predict_logits(exp.spec, result.prompt, exp.frozen, train,
                                        mesh=exp.mesh),
            validation_logits=validation_logits, seed=r, progress=progress, mesh=exp.mesh,
            in_run=result.in_run,
            dynamics=result.in_run.dynamics if result.in_run is not None else None,
            round_dir=round_dir)
        scores = strategy_fn(ctx)
        if primary:  # every example's score: the benchmark's detection AUROC / AUPRC
          save_scores(files.join(round_dir, SCORES_FILE), train["example_id"], scores)
        changed = np.isin(train["example_id"], [e.example_id for e in entries])
        selected = actions.select_suspects(scores, selection_count, exclude=changed)
        new_entries = actions.act(action, selected, train, ctx.train_logits, scores, r, strategy)
        if review and len(selected) and proposals is None:
          path = review_rounds.pause_for_review(
              round_dir, ctx, selected, new_entries, scores, exp.data.label_names,
              round_index=r, strategy=strategy, action=action, resume_command=resume_command,
              seconds={"train": train_seconds, "score": time.time() - started})
          distributed.barrier(f"proposals of round {r}")
          return {"paused_for_review": r, "proposals": path}
        if primary:
          report_writer.write_suspects(files.join(round_dir, "suspects.jsonl"), new_entries,
                                       train, exp.data.label_names)
          ledger_lib.append_round(ledger_path, r, new_entries)
      summary["selected"] = len(selected)
      summary["precision"] = (float(np.mean(train["is_corrupted"][selected]))
                              if len(selected) else None)
      summary["num_misclassified_validation"] = int(np.sum(
          validation_logits.argmax(-1) != splits["validation"]["label"]))
      summary["seconds"]["score"] = time.time() - started
    distributed.barrier(f"ledger of round {r}")  # all read what process 0 appended
    summary.update(label_quality(train_source, read_ledger(ledger_path), r))
    if primary:
      files.write_json(summary_path, summary)
    distributed.barrier(f"round {r} done")
    rounds.append(summary)
    if progress:
      print(report_writer.format_round(summary), flush=True)
    if summary["selected"] == 0 and r < num_rounds:
      break  # nothing left to change: later rounds would repeat this one
  return rounds


def _finished_rounds(output_dir: str) -> list[int]:
  if not files.isdir(output_dir):
    return []
  found = (_ROUND_DIR.fullmatch(name) for name in files.listdir(output_dir))
  return sorted(int(m.group(1)) for m in found if m)


def _discard_round(output_dir: str, r: int, keep_training: bool) -> None:
  """Forgets round r's selection (and, unless keep_training, its training too)."""
  round_dir = files.join(output_dir, f"round_{r}")
  for name in ("round.json", "suspects.jsonl"):
    files.remove(files.join(round_dir, name))
  if not keep_training:
    if not files.is_local(round_dir):  # checkpoints may live in a local stand-in folder
      files.rmtree(checkpoints.checkpoint_dir(round_dir))
    files.rmtree(round_dir)


def checked_ledger(output_dir: str, train_source: dict, primary: bool) -> list:
  """The run's ledger, checked against the data and the finished rounds.

  A torn last line (a crash or a partial copy) is repaired: it and every entry of its
  round and later rounds are dropped, with a message, and those rounds are done again
  (the torn round keeps its training, which used earlier rounds only). Anything else
  that does not fit stops the run with one line.
  """
  path = files.join(output_dir, LEDGER_FILE)
  entries, torn = ledger_lib.check_ledger(path)
  if torn is not None:
    torn_round = torn.round if torn.round is not None else max(
        (e.round for e in entries), default=0)
    kept = [e for e in entries if e.round < torn_round]
    if primary:  # the others see the repaired file after the barrier below
      ledger_lib.write_ledger(path, kept)
      for r in _finished_rounds(output_dir):
        if r >= torn_round:
          _discard_round(output_dir, r, keep_training=r == torn_round)
      for name in ("report.json", "report.md"):
        files.remove(files.join(output_dir, name))
      print(f"gbair: {path}, line {torn.line_number}: the last line was cut off; dropped it "
            f"and {len(entries) - len(kept)} entries of round {torn_round} and later, which "
            f"are done again from round {torn_round}", file=sys.stderr, flush=True)
  # Every process, torn or not (another may have read the file before process 0 repaired
  # it), waits for the repair and reads the ledger again.
  distributed.barrier("ledger checked")
  entries = read_ledger(path)
  if entries:  # every entry fits the data: known ids, old labels as they were then
    apply_ledger(train_source, entries, before_round=max(e.round for e in entries) + 1)
  for r in _finished_rounds(output_dir):
    summary_path = files.join(output_dir, f"round_{r}", "round.json")
    if files.exists(summary_path):
      selected = files.read_json(summary_path).get("selected", 0)
      if selected and not any(e.round == r for e in entries):
        raise UserError(f"{summary_path}: round {r} changed {selected} labels but {path} has "
                        f"no entry of round {r} (ledger replaced or edited?)")
  return entries


def _references(exp: Experiment, splits: dict, output_dir: str, references: tuple,
                rounds: list[dict], progress: bool) -> dict:
  out = {}
  if "clean" in references:
    clean_dir = files.join(output_dir, "references", "clean")
    train = dict(splits["train"])
    train["label"] = train["original_label"].copy()
    metrics_path = files.join(clean_dir, "metrics.json")
    if files.exists(metrics_path):
      metrics = files.read_json(metrics_path)
    else:
      metrics = train_prompt(exp.spec, exp.frozen, {**splits, "train": train}, clean_dir,
                             progress=progress, mesh=exp.mesh).metrics
    out["clean"] = {"test": metrics.get("test", {}),
                    "validation": metrics["epochs"][-1].get("validation", {})}
  if "no_recovery" in references:
    out["no_recovery"] = {"test": rounds[0]["test"], "validation": rounds[0]["validation"],
                          "note": "round 0 of this run: same config, no label changed"}
  return out
