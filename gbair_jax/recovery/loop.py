"""The G-BAIR round loop: train -> evaluate -> score -> select -> act -> ledger, repeated.

Round r trains on the source labels + corruption + ledger entries of rounds < r. Every
round ends by writing `round_<r>/round.json`; a rerun of the same command skips finished
rounds and finished epochs, so a killed run ends with the same ledger and report. The run
directory is locked while a command writes it, and the ledger is checked on every start.

With `gate=True` (gin `run.gate`; the default policy in gin/runs/base.gin) a round whose
model is worse than the last accepted one on a held-out slice of validation undoes the
previous round's relabels and halves the budget (recovery/gate.py).

With `train_on_validation=True` (gin `run.train_on_validation`; on in gin/runs/base.gin)
the validation examples the strategies see join every round's training with their clean
labels (never as candidates): clean data a user has, and the same data for a strategy that
ignores validation labels (loss, confident learning, AUM) as for one that votes with them
(class_vote). It needs the gate: the gate slice, never trained on, then gives the
per-epoch validation metrics and the decision threshold.

With `review=True` (`gbair run --review`) a recovery round stops after selection, before
any label changes, and leaves `round_<r>/proposals.json` plus the evidence for
`gbair review`; the reviewer's decisions become the round's ledger lines, and rerunning
the command goes on from there (gbair_jax/review/).
"""
from __future__ import annotations

import dataclasses
import io
import re
import sys
import time
from typing import Any

import gin
import numpy as np

from gbair_jax import config as config_lib
from gbair_jax.data import describe as describe_lib
from gbair_jax.data import ledger as ledger_lib
from gbair_jax.data.ledger import apply_ledger, read_ledger
from gbair_jax.errors import UserError
from gbair_jax.recovery import actions
from gbair_jax.recovery import class_budgets
from gbair_jax.recovery import gate as gate_lib
from gbair_jax.recovery.context import RoundContext, with_extra_rows
# The built-in strategies register themselves (and their gin configurables) on import.
from gbair_jax.recovery import embedding_vote  # noqa: F401  pylint: disable=unused-import
from gbair_jax.recovery import first_order_gain  # noqa: F401  pylint: disable=unused-import
from gbair_jax.recovery import gradient_vote  # noqa: F401  pylint: disable=unused-import
from gbair_jax.recovery import rank_fusion  # noqa: F401  pylint: disable=unused-import
from gbair_jax.recovery import strategies  # noqa: F401  pylint: disable=unused-import
from gbair_jax.recovery import tracin_strategies
from gbair_jax.recovery import training_dynamics  # noqa: F401  pylint: disable=unused-import
from gbair_jax.recovery import vote_calibration  # noqa: F401  pylint: disable=unused-import
from gbair_jax.recovery import vote_counted  # noqa: F401  pylint: disable=unused-import
from gbair_jax.recovery import vote_gated_loss  # noqa: F401  pylint: disable=unused-import
from gbair_jax.recovery import vote_then_loss  # noqa: F401  pylint: disable=unused-import
from gbair_jax.recovery.registry import get_strategy
from gbair_jax.report import writer as report_writer
from gbair_jax.review import decisions as review_decisions
from gbair_jax.review import proposals as review_proposals
from gbair_jax.review import rounds as review_rounds
from gbair_jax.runtime import files
from gbair_jax.runtime import process as distributed
from gbair_jax.train import checkpoints
from gbair_jax.train import ensemble
from gbair_jax.train.experiment import (Experiment, build_experiment, check_output_dir_free,
                                        claim_output_dir)
from gbair_jax.train.metrics import softmax
from gbair_jax.train.trainer import predict_logits, train_prompt

LEDGER_FILE = ledger_lib.FILE_NAME
RETRAIN_MODES = ("fresh", "warm_start")
REFERENCES = ("clean", "no_recovery", "unchanged_labels")
_ROUND_DIR = re.compile(r"round_(\d+)")


SCORES_FILE = "scores.npz"
GATE_LOGITS_FILE = "gate_logits.npz"  # each round's model on the gate slice: replay a gate rule


def _write_npz(path: str, **arrays) -> None:
  """An .npz written whole, locally or to gs:// (files.write_bytes)."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  files.write_bytes(path, buffer.getvalue())


def save_scores(path: str, example_ids: np.ndarray, scores: np.ndarray) -> None:
  """One round's strategy scores for every training example (written whole)."""
  _write_npz(path, example_id=np.asarray(example_ids, np.int64),
             score=np.asarray(scores, np.float64))


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
      raise UserError(f"run.references: unknown {ref!r} (expected any of clean, no_recovery "
                      "and unchanged_labels, or None for none)")
  return references


@gin.configurable(denylist=["output_dir", "experiment", "review", "resume_command"])
def run(output_dir: str, num_rounds: int = 2, strategy: str = "tracin_opponents",
        action: str = "relabel", retrain: str = "fresh",
        references: tuple | None = ("clean", "no_recovery"), gate: bool = False,
        train_on_validation: bool = False, progress: bool = True,
        experiment: Experiment | None = None, review: bool = False,
        resume_command: str | None = None) -> dict:
  """Runs G-BAIR rounds 0..num_rounds (the last one only trains and evaluates).

  Args:
    output_dir: the run's directory (refused if it holds a different config or data, or
      another process writes it).
    num_rounds: recovery rounds (select + act); the run trains num_rounds + 1 times.
    strategy: selection strategy name (tracin_opponents, loss, self_influence, random,
      confident_learning, ...).
    action: relabel | remove | relabel_or_remove (the best-ranked share of each selection,
      gin `relabel_tier.relabel_share`, relabeled and the rest removed: actions.py). With
      the gate, a rejected round's removals come back like its relabels go back.
    retrain: fresh (new prompt each round) | warm_start (continue from the last prompt).
    references: which reference results to add to the report: "clean" trains on the
      uncorrupted labels (as long as the run's rounds together with warm_start: see
      `_references`); "no_recovery" is round 0 (same config, no label changed);
      "unchanged_labels" (warm_start only) continues round 0's model for num_rounds more
      trainings on the labels as given: what the extra training alone brings. None or ()
      adds none.
    gate: hold out a slice of validation and keep a round's changes only if the next
      model is not worse on it (recovery/gate.py; gin `GateConfig.*`); the run's result
      is then the last accepted round (report.json `final_round`).
    train_on_validation: every round (and every prompt a strategy trains) also trains on
      the validation examples the strategies see, with their clean labels (never candidates
      for a change). Needs `gate`: the gate slice is then the only validation no prompt
      trained on, so the per-epoch validation metrics and the decision threshold come from
      it, and the clean reference trains on the same validation examples.
    review: pause a recovery round after selection for `gbair review` and return
      {"paused_for_review": r, "proposals": path}; not part of the config. A round whose
      ledger holds human decisions goes on with them (with or without `review`).
    resume_command: the command line to show the reviewer (for the page's summary).
  """
  references = normalize_references(references)
  if retrain not in RETRAIN_MODES:
    raise UserError(f"run.retrain='{retrain}' is unknown (expected fresh or warm_start)")
  if "unchanged_labels" in references and retrain != "warm_start":
    raise UserError("run.references: 'unchanged_labels' needs run.retrain='warm_start' (with "
                    "fresh retraining it would be round 0 again: 'no_recovery')")
  if action not in actions.ACTIONS:
    raise UserError(f"run.action='{action}' is unknown (expected one of "
                    f"{', '.join(actions.ACTIONS)})")
  if num_rounds < 0:
    raise UserError(f"run.num_rounds must be >= 0, got {num_rounds}")
  strategy_fn = get_strategy(strategy)  # fail before any work on an unknown name
  gate_config = gate_lib.GateConfig() if gate else None
  if gate_config is not None:
    gate_config.check()
    if review:
      raise UserError("run.gate=True and --review cannot be combined yet: a reviewed "
                      "round's decisions are final (add --gin.run.gate=False "
                      "--gin.run.train_on_validation=False, or use "
                      "gin/runs/quickstart_review.gin)")
  if train_on_validation and gate_config is None:
    raise UserError("run.train_on_validation=True needs run.gate=True: the gate slice is "
                    "then the only validation left out of training (metrics, threshold)")
  primary = distributed.is_primary()  # several processes: all compute, process 0 writes
  progress = progress and primary
  check_output_dir_free(output_dir)  # refused at once, not after loading the data
  checkpoints.checkpoint_dir(files.join(output_dir, "round_0"))  # refused before any work
  # Everything the user gave is checked before output_dir is touched: a refused command
  # writes nothing, and the corrected one can use the same directory.
  exp = experiment or build_experiment()
  splits = exp.tokenized_splits()
  if gate_config is not None:  # the gate slice is held out before anything sees validation
    splits["validation"], splits["gate"] = gate_lib.split_gate(splits["validation"], gate_config)
  if train_on_validation and tracin_strategies.in_run_hook(
      strategy, exp.spec, splits["validation"]) is not None:
    raise UserError("run.train_on_validation=True needs tracin.source = 'checkpoints': the "
                    "in-run accumulators cover the training rows only (add "
                    "--gin.run.train_on_validation=False for in-run scoring)")
  train_source = splits["train"]
  selection_count = actions.selection_size(len(train_source["label"]))
  if action == "relabel_or_remove":
    actions.relabel_tier(selection_count)  # a bad relabel_share is refused before any work
  by_class = class_budgets.per_class_budgets()
  if progress:
    for line in describe_lib.format_rows_read(exp.data.rows_read):
      print(line, flush=True)
  config_text = config_lib.recorded_config() + f"\n# strategy: {strategy}\n"
  if train_on_validation:  # also when passed in Python (gbair compare's "+validation")
    config_text += "# train_on_validation: True\n"
  with claim_output_dir(output_dir, config_text, exp.data):
    settings = _Settings(output_dir=output_dir, exp=exp, splits=splits, num_rounds=num_rounds,
                         strategy=strategy, strategy_fn=strategy_fn, action=action,
                         retrain=retrain, gate=gate_config, primary=primary, progress=progress,
                         review=review, resume_command=resume_command, by_class=by_class,
                         extra_train=splits["validation"] if train_on_validation else None)
    outcome = _rounds(settings, selection_count)
    if isinstance(outcome, dict):  # paused for review: no report until the run goes on
      return outcome
    rounds, final_round = outcome
    report = {
        # The config recorded when the directory was claimed: the same in every rerun.
        "config": config_text,
        "task": exp.data.task,
        "label_names": list(exp.data.label_names),
        "strategy": strategy,
        "action": action,
        "num_train": int(len(train_source["label"])),
        "num_corrupted": int(train_source["is_corrupted"].sum()),
        "train_on_validation": bool(train_on_validation),
        "rounds": rounds,
        "final_round": final_round,  # the round whose model is the result (gate: accepted)
        "references": _references(settings, references, rounds),
        **exp.runtime(),  # mesh shape, device kind, number of processes
    }
    if primary:
      report_writer.write_report(output_dir, report, exp.data.label_names)
  if progress:
    print(report_writer.format_table(report))
    print(f"report: {files.join(output_dir, 'report.md')}")
  return report


@dataclasses.dataclass(frozen=True)
class _Settings:
  """One `run`'s fixed inputs, as the round functions below read them."""

  output_dir: str
  exp: Experiment
  splits: dict             # tokenised splits; "gate" too when the gate is on
  num_rounds: int
  strategy: str
  strategy_fn: Any
  action: str
  retrain: str
  gate: gate_lib.GateConfig | None
  primary: bool            # process 0: the one that writes
  progress: bool
  review: bool
  resume_command: str | None
  by_class: bool = False           # gin per_class_budgets.enabled (recovery/class_budgets.py)
  extra_train: dict | None = None  # run.train_on_validation: clean rows every training adds

  @property
  def ledger_path(self) -> str:
    return files.join(self.output_dir, LEDGER_FILE)

  def round_dir(self, r: int) -> str:
    return files.join(self.output_dir, f"round_{r}")


@dataclasses.dataclass
class _RoundState:
  """What carries from one round to the next: the prompt to warm-start from, the selection
  budget, and the gate's last accepted round (restored from round.json on a rerun)."""

  budget: int
  prompt: np.ndarray | None = None
  accepted_round: int = 0
  accepted_value: float | None = None

  def restore(self, summary: dict, round_dir_of) -> None:
    """The state after the finished round `summary` (`round_dir_of(r)`: round r's folder)."""
    self.budget = summary.get("budget", self.budget)
    gate = summary.get("gate")
    if gate is not None:
      self.accepted_round, self.accepted_value = gate["accepted_round"], gate["accepted_value"]
    # A rejected round's model is not gone on from: warm starts use the accepted one.
    rejected = gate is not None and not gate["accepted"]
    self.prompt = _last_prompt(round_dir_of(self.accepted_round if rejected else summary["round"]))


def _last_prompt(round_dir: str) -> np.ndarray:
  return checkpoints.load_prompt(round_dir, checkpoints.list_checkpoints(round_dir)[-1].epoch)


def _rounds(job: _Settings, selection_count: int) -> tuple[list[dict], int] | dict:
  """Rounds 0..num_rounds, each reused from round.json when finished: (their summaries, the
  round whose model is the run's result), or {"paused_for_review": r, "proposals": path}
  when a round pauses for review."""
  train_source = job.splits["train"]
  checked_ledger(job.output_dir, train_source, job.primary)
  rounds: list[dict] = []
  state = _RoundState(budget=selection_count)
  for r in range(job.num_rounds + 1):
    round_dir = job.round_dir(r)
    summary_path = files.join(round_dir, "round.json")
    if files.exists(summary_path):  # finished before a kill: reuse it
      summary = files.read_json(summary_path)
      rounds.append(summary)
      state.restore(summary, job.round_dir)
      if summary["selected"] == 0 and r < job.num_rounds:
        break
      continue

    entries = read_ledger(job.ledger_path)
    proposals = review_proposals.read_proposals(round_dir) if r < job.num_rounds else None
    if proposals is not None:  # paused for review before
      decided = [e for e in entries if e.round == r]
      if job.review and not decided and not review_decisions.is_closed(job.output_dir, r):
        return {"paused_for_review": r, "proposals": review_proposals.proposals_path(round_dir)}
      if job.primary:  # going on: no decision may land after the ledger is read
        review_decisions.close_review(job.output_dir, r)
      distributed.barrier(f"review of round {r} closed")
      entries = read_ledger(job.ledger_path)
    train = apply_ledger(train_source, entries, before_round=r)
    result, summary = _train_round(job, train, r,
                                   state.prompt if job.retrain == "warm_start" else None)
    state.prompt = result.prompt
    rollback = _gate_round(job, result, summary, entries, state) if job.gate else []
    if rollback and job.retrain == "warm_start":  # go on from the accepted model
      state.prompt = _last_prompt(job.round_dir(state.accepted_round))

    decided = [e for e in entries if e.round == r]
    reviewed = proposals is not None and any(review_decisions.is_human(e) for e in decided)
    if r < job.num_rounds and reviewed:  # the reviewer's decisions are this round's changes
      summary.update(review_rounds.reviewed_round(round_dir, proposals, entries, train,
                                                  train_source, write=job.primary))
    elif r < job.num_rounds or rollback:
      paused = _select_round(job, result, summary, entries, rollback, state, r,
                             pause=job.review and proposals is None)
      if paused:
        return paused
    distributed.barrier(f"ledger of round {r}")  # all read what process 0 appended
    summary.update(label_quality(train_source, read_ledger(job.ledger_path), r))
    if job.primary:
      files.write_json(summary_path, summary)
    distributed.barrier(f"round {r} done")
    rounds.append(summary)
    if job.progress:
      print(report_writer.format_round(summary), flush=True)
    if summary["selected"] == 0 and r < job.num_rounds:
      break  # nothing left to change: later rounds would repeat this one
  return rounds, (state.accepted_round if job.gate else rounds[-1]["round"])


def _train_round(job: _Settings, train: dict, r: int, initial_prompt):
  """Trains round r on its labels: (the TrainResult, the round's summary so far)."""
  started = time.time()
  exp = job.exp
  hook = (tracin_strategies.in_run_hook(job.strategy, exp.spec, job.splits["validation"])
          if r < job.num_rounds else None)  # tracin.source = "in_run": scored while training
  splits = _training_splits(job.splits, train, job.extra_train)
  result = train_prompt(exp.spec, exp.frozen, splits, job.round_dir(r),
                        initial_prompt=initial_prompt, progress=job.progress, mesh=exp.mesh,
                        in_run=hook)
  summary = {"round": r, "label_names": list(exp.data.label_names),
             "num_train": int(len(train["label"])), "selected": 0, "removed": 0,
             "precision": None,
             **_final_metrics(result.metrics),
             "seconds": {"train": time.time() - started, "score": 0.0}}
  return result, summary


def _gate_round(job: _Settings, result, summary: dict, entries: list, state: _RoundState) -> list:
  """Scores round r's model on the gate slice; accepts it, or rejects it and returns the
  ledger lines that undo round r - 1's relabels (and halves the budget)."""
  r, gate, exp = summary["round"], job.gate, job.exp
  logits = predict_logits(exp.spec, result.prompt, exp.frozen, job.splits["gate"], mesh=exp.mesh)
  value = gate_lib.gate_value(logits, job.splits["gate"], gate)
  if job.primary:
    _write_npz(files.join(job.round_dir(r), GATE_LOGITS_FILE),
               example_id=job.splits["gate"]["example_id"], label=job.splits["gate"]["label"],
               logits=logits)
  last_changes = [e for e in entries if e.round == r - 1 and not gate_lib.is_rollback(e)]
  noise = None
  # Recorded even with noise_z = 0, so a noise_z can be chosen by replaying finished runs.
  if last_changes:  # the accepted model on the same gate resamples
    accepted_logits = predict_logits(exp.spec, _last_prompt(job.round_dir(state.accepted_round)),
                                     exp.frozen, job.splits["gate"], mesh=exp.mesh)
    noise = gate_lib.difference_noise(logits, accepted_logits, job.splits["gate"], gate)
  rejected = bool(last_changes) and gate_lib.rejects(value, state.accepted_value, gate,
                                                     noise or 0.0)
  if rejected:
    state.budget //= 2
  else:
    state.accepted_round, state.accepted_value = r, value
  summary["budget"] = state.budget
  summary["gate"] = {"metric": gate.metric, "value": value, "accepted": not rejected,
                     "accepted_round": state.accepted_round,
                     "accepted_value": state.accepted_value, "noise": noise,
                     "rolled_back": len(last_changes) if rejected else 0}
  return gate_lib.rollback_entries(last_changes, r) if rejected else []


def _select_round(job: _Settings, result, summary: dict, entries: list, rollback: list,
                  state: _RoundState, r: int, pause: bool) -> dict | None:
  """Round r's changes: scores every training example, selects `state.budget` of them and
  appends their ledger lines (after `rollback`, when the gate rejected this round: then the
  accepted round's saved scores choose). Fills the summary; with `pause`, stops for review
  and returns where the proposals are."""
  started = time.time()
  exp, splits, round_dir = job.exp, job.splits, job.round_dir(r)
  train = apply_ledger(splits["train"], entries + rollback, before_round=r + 1)
  ctx = None
  own = [e for e in entries if e.round == r]
  if own:
    # Killed after this round's ledger append and before round.json (or between the
    # append and the barrier of several processes): the ledger is the round's record.
    # Selecting again would exclude these very entries and pick other examples.
    changes = [e for e in own if not gate_lib.is_rollback(e)]
    train = apply_ledger(splits["train"], entries, before_round=r)
    row_of = {int(i): n for n, i in enumerate(train["example_id"])}
    selected = np.array([row_of[e.example_id] for e in changes], np.int64)
    suspects_path = files.join(round_dir, "suspects.jsonl")
    if job.primary and not files.exists(suspects_path):
      report_writer.write_suspects(suspects_path, changes, train, exp.data.label_names)
  elif r == job.num_rounds or state.budget == 0:  # only the rollback: nothing new to choose
    selected, changes = np.zeros(0, np.int64), []
    if job.primary:
      ledger_lib.append_round(job.ledger_path, r, rollback)
  else:
    if rollback:  # the accepted model scored these labels; its scores still apply
      accepted_dir = job.round_dir(state.accepted_round)
      prompt = _last_prompt(accepted_dir)
      scores = _saved_scores(files.join(accepted_dir, SCORES_FILE), train["example_id"])
    else:
      prompt = result.prompt
      ctx = _round_context(job, result, train, r)
      scores = job.strategy_fn(ctx)
      if job.primary:  # every example's score: the benchmark's detection AUROC / AUPRC
        save_scores(files.join(round_dir, SCORES_FILE), train["example_id"], scores)
    train_logits = (ctx.train_logits if ctx is not None else
                    predict_logits(exp.spec, prompt, exp.frozen, train, mesh=exp.mesh))
    ever_changed = np.isin(train["example_id"], [e.example_id for e in entries + rollback])
    selected = class_budgets.select_suspects_by_class(
        scores, train["label"], softmax(train_logits), state.budget, exclude=ever_changed,
        by_class=job.by_class)
    changes = actions.act(job.action, selected, train, train_logits, scores, r, job.strategy)
    if pause and len(selected):
      path = review_rounds.pause_for_review(
          round_dir, ctx, selected, changes, scores, exp.data.label_names,
          round_index=r, strategy=job.strategy, action=job.action,
          resume_command=job.resume_command,
          seconds={"train": summary["seconds"]["train"], "score": time.time() - started})
      distributed.barrier(f"proposals of round {r}")
      return {"paused_for_review": r, "proposals": path}
    if job.primary:
      report_writer.write_suspects(files.join(round_dir, "suspects.jsonl"), changes,
                                   train, exp.data.label_names)
      ledger_lib.append_round(job.ledger_path, r, rollback + changes)
  summary["selected"] = len(selected)
  summary["removed"] = sum(e.new_label is None for e in changes)
  summary["precision"] = (float(np.mean(train["is_corrupted"][selected]))
                          if len(selected) else None)
  validation_logits = (ctx.validation_logits if ctx is not None
                       else _validation_logits(job, result))
  summary["num_misclassified_validation"] = int(np.sum(
      validation_logits.argmax(-1) != splits["validation"]["label"]))
  summary["seconds"]["score"] = time.time() - started
  return None


def _round_context(job: _Settings, result, train: dict, r: int) -> RoundContext:
  """What a strategy sees of round r's model (trainer.TrainResult `result`)."""
  exp, splits, round_dir = job.exp, job.splits, job.round_dir(r)
  return RoundContext(
      spec=exp.spec, frozen=exp.frozen, train=train, validation=splits["validation"],
      checkpoints=checkpoints.load_tracin_checkpoints(round_dir),
      final_prompt=ensemble.first_member(result.prompt),  # gradients: member 0
      # At the final prompt in both modes: in-run scores with the logits each example had
      # in the last epoch picked 0.625 where these picked 0.70 (docs/BENCHMARKS.md).
      train_logits=predict_logits(exp.spec, result.prompt, exp.frozen, train, mesh=exp.mesh),
      validation_logits=_validation_logits(job, result),
      seed=r, progress=job.progress, mesh=exp.mesh, in_run=result.in_run,
      dynamics=result.in_run.dynamics if result.in_run is not None else None,
      round_dir=round_dir, round_index=r, extra_train=job.extra_train)


def _validation_logits(job: _Settings, result) -> np.ndarray:
  """The validation split's logits at the round's final prompt: the trainer's last
  evaluation, unless the training split joined the validation rows (run.train_on_validation:
  the trainer evaluated the gate slice) or the round's training had finished before."""
  if result.validation_logits is not None and job.extra_train is None:
    return result.validation_logits
  return predict_logits(job.exp.spec, result.prompt, job.exp.frozen, job.splits["validation"],
                        mesh=job.exp.mesh)


def _saved_scores(path: str, example_ids: np.ndarray) -> np.ndarray:
  """A round's scores.npz, in the order of `example_ids` (missing ids: -inf, never chosen)."""
  saved = np.load(io.BytesIO(files.read_bytes(path)))
  by_id = dict(zip(saved["example_id"].tolist(), saved["score"].tolist()))
  return np.array([by_id.get(int(i), -np.inf) for i in example_ids], np.float64)


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


def _training_splits(splits: dict, train: dict, extra_train: dict | None) -> dict:
  """What `train_prompt` gets: `train` evaluated on validation, or, when validation rows
  join the training (`extra_train`), `train` + those rows evaluated on the gate slice."""
  if extra_train is None:
    return {**splits, "train": train}
  return {**splits, "train": with_extra_rows(train, extra_train), "validation": splits["gate"]}


def _references(job: _Settings, references: tuple, rounds: list[dict]) -> dict:
  """The report's reference results. Each trains on the same data as the rounds (with
  `run.train_on_validation`, the validation examples too) and resumes like a round.

  With `warm_start`, the run's last model has trained num_rounds + 1 times in a row, each
  time from the one before; three epochs may not be enough to converge, so part of what the
  run gains over round 0 is that training alone. Its references train as long, the same way
  (`_train_in_stages`): "clean" on the uncorrupted labels, "unchanged_labels" from round 0's
  model on the labels as given. Fresh retraining trains "clean" once, like every round.
  """
  out = {}
  extra = job.extra_train
  references_dir = files.join(job.output_dir, "references")
  if "clean" in references:
    # Its own directory per kind of data and retraining: earlier runs trained otherwise.
    name = "clean_with_validation" if extra is not None else "clean"
    train = dict(job.splits["train"])
    train["label"] = train["original_label"].copy()
    if job.retrain == "warm_start":
      directory = files.join(references_dir, name + "_warm_start")
      stage_dirs = [files.join(directory, f"stage_{k}") for k in range(job.num_rounds + 1)]
    else:
      stage_dirs = [files.join(references_dir, name)]
    metrics = _train_in_stages(job, _training_splits(job.splits, train, extra), stage_dirs, None)
    out["clean"] = _final_metrics(metrics)
  round0 = {"test": rounds[0]["test"], "validation": rounds[0]["validation"]}
  if "no_recovery" in references:
    out["no_recovery"] = {**round0, "note": "round 0 of this run: same config, no label changed"}
  if "unchanged_labels" in references:
    stage_dirs = [files.join(references_dir, "unchanged_labels", f"stage_{k}")
                  for k in range(1, job.num_rounds + 1)]
    metrics = _train_in_stages(job, _training_splits(job.splits, job.splits["train"], extra),
                               stage_dirs, _last_prompt(job.round_dir(0)))
    out["unchanged_labels"] = (
        {**round0, "note": "round 0 of this run (num_rounds = 0: no more training)"}
        if metrics is None else
        {**_final_metrics(metrics), "note": f"round 0's model trained {job.num_rounds} more "
         "times on the labels as given"})
  return out


def _final_metrics(metrics: dict) -> dict:
  """A training's metrics.json as a round or reference reports it: test, last epoch's validation."""
  return {"test": metrics.get("test", {}), "validation": metrics["epochs"][-1].get("validation", {})}


def _train_in_stages(job: _Settings, splits: dict, stage_dirs: list[str], initial_prompt
                     ) -> dict | None:
  """Trains once per directory, each time warm-started from the stage before (the first
  from `initial_prompt`; None: a fresh prompt), as a warm_start run's rounds do. A finished
  stage is reused. Returns the last stage's metrics (None without stages)."""
  prompt, metrics = initial_prompt, None
  for i, stage_dir in enumerate(stage_dirs):
    metrics_path = files.join(stage_dir, "metrics.json")
    if files.exists(metrics_path):
      metrics = files.read_json(metrics_path)
      if i + 1 < len(stage_dirs):  # the next stage starts from it
        prompt = _last_prompt(stage_dir)
    else:
      result = train_prompt(job.exp.spec, job.exp.frozen, splits, stage_dir,
                            initial_prompt=prompt, progress=job.progress, mesh=job.exp.mesh)
      prompt, metrics = result.prompt, result.metrics
  return metrics
