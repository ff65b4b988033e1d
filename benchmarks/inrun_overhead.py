"""In-run TracIn against checkpoint TracInCP on the quickstart's round 0, side by side.

  .venv/bin/python benchmarks/inrun_overhead.py [--gin_file=gin/runs/quickstart.gin] \
      [--repeats=2] [--output_dir=/tmp/inrun_overhead] [--ideal]
Trains round 0 twice from scratch (plain steps; in-run steps accumulating against every
validation query, with the `tracin.*` bindings), scores the training set as the round loop
does (tracin_opponents from the checkpoints; from the in-run accumulators; both with the
training logits at the final prompt and the trainer's last evaluation for validation's),
and prints one JSON line:
  overhead       in-run training / plain training (seconds of `train_prompt`, both with
                 their validation evaluations and the final test evaluation); target <= 1.15
  round_ratio    (in-run training + in-run scoring) / (plain training + checkpoint
                 scoring); target <= 0.6
  spearman       rank correlation of the per-example net (mean over queries) influence,
                 in-run vs checkpoints; target >= 0.9
  precision_checkpoints / precision_in_run: share of corrupted labels among the top
                 `selection_size` scores of the configured strategy; target |diff| <= 0.03
  --ideal adds, once, a third training with the query gradients taken again before every
  step from epoch 1 (tracin.query_every_steps=1, first_query_epoch=1): per-step TracIn,
  the quantity both modes approximate (Pruthi et al. 2020), at one query pass per step.
  It reports `spearman_ideal_checkpoints` / `spearman_ideal_in_run` (each mode's net
  influence against it), `precision_ideal`, and its own seconds.
Each repeat runs plain, in-run, checkpoint scoring, in-run scoring in that order, with the
persistent XLA cache on (as `gbair` has it), so the last repeat is the warm-cache number
of a later round; every repeat's numbers are in `repeats`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import common


def _ranks(values):
  import numpy as np  # pylint: disable=g-import-not-at-top
  return np.argsort(np.argsort(values, kind="stable"), kind="stable").astype(np.float64)


def spearman(a, b) -> float:
  import numpy as np  # pylint: disable=g-import-not-at-top
  return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def _load() -> float:
  return os.getloadavg()[0]


def main() -> None:
  p = common.parser(__doc__)
  p.add_argument("--output_dir", default=None)
  p.add_argument("--ideal", action="store_true",
                 help="also train once with per-step query gradients (slow: ~10x a training)")
  p.set_defaults(repeats=2)
  args = p.parse_args()
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                        os.path.join(os.path.expanduser("~"), ".cache", "gbair_jax", "xla"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gbair_jax import config  # pylint: disable=g-import-not-at-top
  from gbair_jax.influence import tracin  # pylint: disable=g-import-not-at-top
  from gbair_jax.recovery import actions, tracin_strategies  # pylint: disable=g-import-not-at-top
  from gbair_jax.recovery.context import RoundContext  # pylint: disable=g-import-not-at-top
  from gbair_jax.train import checkpoints, in_run  # pylint: disable=g-import-not-at-top
  from gbair_jax.train.experiment import build_experiment  # pylint: disable=g-import-not-at-top
  from gbair_jax.train.trainer import predict_logits, train_prompt  # pylint: disable=g-import-not-at-top

  config.parse_gin(args.gin_file or ["gin/runs/quickstart.gin"], args.gin_bindings)
  exp = build_experiment()
  splits = exp.tokenized_splits()
  train, validation = splits["train"], splits["validation"]
  budget = actions.selection_size(len(train["label"]))
  settings = in_run.tracin_settings()
  hook_options = {k: settings[k] for k in ("top_k", "first_query_epoch", "query_every_steps")}
  root = args.output_dir or tempfile.mkdtemp(prefix="inrun_overhead_")

  captured = {}
  tracin_scores = tracin.tracin_scores

  def capture(*a, **kw):  # the checkpoint pass's raw reductions, for the agreement numbers
    captured["result"] = tracin_scores(*a, **kw)
    return captured["result"]

  tracin.tracin_scores = capture

  def timed(fn, *a, **kw):
    """(result, wall seconds, CPU seconds of this process: less swayed by other jobs)."""
    wall, cpu = time.time(), time.process_time()
    out = fn(*a, **kw)
    return out, time.time() - wall, time.process_time() - cpu

  def score(round_dir, result):
    """The loop's scoring step (loop._round_context): logits at the final prompt, then
    the strategy."""
    ctx = RoundContext(
        spec=exp.spec, frozen=exp.frozen, train=train, validation=validation,
        checkpoints=checkpoints.load_tracin_checkpoints(round_dir), final_prompt=result.prompt,
        train_logits=predict_logits(exp.spec, result.prompt, exp.frozen, train),
        validation_logits=result.validation_logits,
        seed=0, progress=False, in_run=result.in_run,
        dynamics=None if result.in_run is None else result.in_run.dynamics)
    return tracin_strategies.tracin_opponents(ctx)

  def precision(scores):
    return float(np.mean(train["is_corrupted"][actions.select_suspects(scores, budget)]))

  repeats = []
  for repeat in range(args.repeats):
    load_before = _load()
    dirs = {mode: os.path.join(root, f"repeat_{repeat}", mode, "round_0")
            for mode in ("checkpoints", "in_run")}
    for d in dirs.values():
      shutil.rmtree(d, ignore_errors=True)
    plain, plain_s, plain_cpu = timed(train_prompt, exp.spec, exp.frozen, splits,
                                      dirs["checkpoints"], progress=False, tensorboard=False)
    hook = in_run.InRunTracIn(exp.spec, queries=validation, **hook_options)
    inrun, inrun_s, inrun_cpu = timed(train_prompt, exp.spec, exp.frozen, splits, dirs["in_run"],
                                      progress=False, tensorboard=False, in_run=hook)
    captured.clear()
    scores_ckpt, score_ckpt_s, score_ckpt_cpu = timed(score, dirs["checkpoints"], plain)
    scores_inrun, score_inrun_s, score_inrun_cpu = timed(score, dirs["in_run"], inrun)
    if "result" in captured:
      ckpt = captured["result"]
      row = {int(i): n for n, i in enumerate(train["example_id"])}
      order = np.array([row[int(i)] for i in ckpt.example_ids])
      mean_ckpt = np.empty(len(order))
      mean_ckpt[order] = ckpt.mean_influence
      self_ckpt = np.empty(len(order))
      self_ckpt[order] = ckpt.self_influence
    else:
      raise SystemExit("the checkpoint strategy ran no TracIn pass: check the gin config")
    epoch_s = lambda r: [round(e["seconds"], 2) for e in r.metrics["epochs"]]
    repeats.append({
        "load_before": round(load_before, 2), "load_after": round(_load(), 2),
        "train_s": {"plain": round(plain_s, 2), "in_run": round(inrun_s, 2)},
        "train_cpu_s": {"plain": round(plain_cpu, 2), "in_run": round(inrun_cpu, 2)},
        "epoch_s": {"plain": epoch_s(plain), "in_run": epoch_s(inrun)},
        "score_s": {"checkpoints": round(score_ckpt_s, 2), "in_run": round(score_inrun_s, 2)},
        "score_cpu_s": {"checkpoints": round(score_ckpt_cpu, 2),
                        "in_run": round(score_inrun_cpu, 2)},
        "overhead": round(inrun_s / plain_s, 3),
        "overhead_cpu": round(inrun_cpu / plain_cpu, 3),
        "overhead_epochs": round(sum(epoch_s(inrun)) / sum(epoch_s(plain)), 3),
        "round_ratio": round((inrun_s + score_inrun_s) / (plain_s + score_ckpt_s), 3),
        "round_ratio_cpu": round((inrun_cpu + score_inrun_cpu) / (plain_cpu + score_ckpt_cpu), 3),
        "spearman": round(spearman(inrun.in_run.mean_influence, mean_ckpt), 4),
        "spearman_self_influence": round(spearman(inrun.in_run.self_influence, self_ckpt), 4),
        "spearman_strategy_score": round(spearman(scores_inrun, scores_ckpt), 4),
        "precision_checkpoints": round(precision(scores_ckpt), 4),
        "precision_in_run": round(precision(scores_inrun), 4),
        "max_prompt_difference": float(np.max(np.abs(inrun.prompt - plain.prompt))),
        "test_auc": {"plain": plain.metrics["test"]["auc"], "in_run": inrun.metrics["test"]["auc"]},
    })
  last = repeats[-1]
  ideal = {}
  if args.ideal:  # per-step TracIn: the yardstick for both modes' approximations
    ideal_dir = os.path.join(root, "ideal", "round_0")
    shutil.rmtree(ideal_dir, ignore_errors=True)
    hook = in_run.InRunTracIn(exp.spec, queries=validation, top_k=0, first_query_epoch=1,
                              query_every_steps=1)
    exact, exact_s, exact_cpu = timed(train_prompt, exp.spec, exp.frozen, splits, ideal_dir,
                                      progress=False, tensorboard=False, in_run=hook)
    ideal = {
        "spearman_ideal_checkpoints": round(spearman(exact.in_run.mean_influence, mean_ckpt), 4),
        "spearman_ideal_in_run": round(spearman(exact.in_run.mean_influence,
                                                inrun.in_run.mean_influence), 4),
        "precision_ideal": round(precision(score(ideal_dir, exact)), 4),
        "ideal_train_s": round(exact_s, 2), "ideal_train_cpu_s": round(exact_cpu, 2)}
  print(json.dumps({
      "benchmark": "inrun_overhead", "backbone": exp.spec.backbone.name,
      "num_train": int(len(train["label"])), "num_queries": int(len(validation["label"])),
      "selection_size": budget, **hook_options,
      **{k: last[k] for k in ("overhead", "round_ratio", "spearman", "precision_checkpoints",
                              "precision_in_run", "overhead_cpu", "round_ratio_cpu",
                              "overhead_epochs")},
      **ideal, "repeats": repeats, **common.machine()}))


if __name__ == "__main__":
  main()
