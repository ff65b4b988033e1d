"""`gbair benchmark`: every strategy of a suite on the same corrupted sets, over seeds.

For each corruption seed s, the suite's gin config runs with `corrupt_labels.seed = s`
(and `train_prompt.seed = s`, so training noise varies too) as one `gbair compare` in
`<output_dir>/seed_<s>/`: round 0 and the clean reference are trained once per seed and
shared by every strategy, and the strategies' rounds start from the same model on the same
labels. That pairs the runs: differences between strategies are taken seed by seed, and
their 95% interval comes from a paired bootstrap over seeds. Every run resumes like
`gbair run`, so a killed benchmark continues where it stopped, and a rerun that lists more
strategies or seeds adds them to the same directory (config.gin records neither list).

`benchmark.json` holds per strategy {"mean", "std", "values"} of each metric in METRICS
(values in seed order; std with ddof 1), and per strategy `paired.<name>.vs_<baseline>` =
{"mean_diff", "ci95": [low, high], "n"} of the final test AUC, for `loss`,
`confident_learning` and, when the suite runs them, their `+validation` controls (trained
with the clean validation labels too, compare.py; `baselines` lists which);
report/benchmark_writer.py writes benchmark.md and benchmark.png from it.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import itertools

import gin
import numpy as np

from gbair_jax import config as config_lib
from gbair_jax.data.dataset import load_data
from gbair_jax.errors import UserError
from gbair_jax.runtime import process as distributed
from gbair_jax.recovery import compare as compare_lib
from gbair_jax.recovery import loop
from gbair_jax.report import writer
from gbair_jax.runtime import files
from gbair_jax.train.experiment import build_experiment, check_output_dir_free, claim_output_dir
from gbair_jax.train.metrics import average_precision, binary_auc

# Per-run metrics, in the order benchmark.md shows them: (key, label, what it is).
METRICS = (
    ("final_test_auc", "final test AUC", "test ROC AUC after the last round"),
    ("final_test_accuracy", "final test acc", "test accuracy at the argmax"),
    ("final_test_f1_at_threshold", "final test F1@t",
     "test F1 at the threshold chosen on validation (binary tasks; argmax F1 otherwise)"),
    ("final_test_f1", "final test F1", "test F1 at the argmax"),
    ("recovered_share", "recovered share",
     "(final - round 0) / (clean - round 0) test AUC: the share of the AUC lost to noise won back"),
    ("precision", "precision", "share of the changed labels that were corrupted"),
    ("recall", "recall", "share of the corrupted labels that were changed"),
    ("wrong_labels_remaining", "wrong labels left",
     "training labels differing from the clean ones after the last round"),
    ("detection_auroc", "detection AUROC",
     "ROC AUC of the round-0 scores against the corruption mask (how well the ranking "
     "separates flipped from clean labels before any change)"),
    ("detection_auprc", "detection AUPRC", "average precision of the same ranking"),
    ("validation_never_fell", "val never fell",
     "share of runs whose validation AUC never fell from one round to the next"),
    ("final_not_below_round0", "final >= round 0",
     "share of runs whose final test AUC is not below round 0's"),
    ("final_not_below_unchanged", "final >= unchanged labels",
     "share of runs whose final test AUC is not below round 0's model trained on as long "
     "without a change (the unchanged_labels reference, warm_start runs; '-' without it)"),
    ("gate_agreement", "gate agrees with test",
     "share of the gate's decisions (keep a round, or roll it back) that test AUC agrees "
     "with: it rose from the last kept model where the gate kept the round, fell where the "
     "gate rolled it back ('-' without a gate)"),
)
PAIRED_METRIC = "final_test_auc"
BASELINES = ("loss", "confident_learning")
QUICK_GIN = "gin/benchmarks/quick.gin"


def default_strategy() -> str:
  """The strategy `gbair run` uses under the current gin config."""
  try:
    return gin.query_parameter("run.strategy")
  except ValueError:
    return inspect.signature(loop.run).parameters["strategy"].default


def _mean_std(values: list) -> dict:
  finite = [float(v) for v in values if v is not None and np.isfinite(v)]
  if not finite:
    return {"mean": None, "std": None, "values": values}
  std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
  return {"mean": float(np.mean(finite)), "std": std, "values": values}


def paired_bootstrap(values: list, baseline: list, num_resamples: int = 10000,
                     seed: int = 0) -> dict:
  """Mean of the per-seed differences values - baseline and its 95% percentile interval.

  Resamples seeds with replacement, keeping pairs together. With n^n <= num_resamples
  possible resamples (n <= 5 seeds at the default), all of them are enumerated (the exact
  bootstrap distribution, no randomness); otherwise `num_resamples` draws from
  `np.random.default_rng(seed)`. The interval runs from the 2.5% to the 97.5% quantile of
  the resampled means, each the smallest mean whose cumulative share reaches it (numpy's
  "inverted_cdf": a value the bootstrap can produce, never an interpolation). Seeds where
  either value is None are left out.
  """
  pairs = [(a, b) for a, b in zip(values, baseline) if a is not None and b is not None]
  if not pairs:
    return {"mean_diff": None, "ci95": [None, None], "n": 0}
  diffs = np.array([a - b for a, b in pairs], np.float64)
  n = len(diffs)
  if n ** n <= num_resamples:
    index = np.array(list(itertools.product(range(n), repeat=n)))
  else:
    index = np.random.default_rng(seed).integers(0, n, size=(num_resamples, n))
  means = diffs[index].mean(axis=1)
  low, high = np.percentile(means, [2.5, 97.5], method="inverted_cdf")
  return {"mean_diff": float(diffs.mean()), "ci95": [float(low), float(high)], "n": n}


def _finite_or_none(value):
  return None if value is None or not np.isfinite(value) else float(value)


def gate_agreement(rounds: list[dict]) -> float | None:
  """Share of a gated run's decisions whose direction the held-out test AUC agrees with.

  The gate sees only its slice of validation; test AUC is what the decision was meant to
  protect. Round r (r >= 1) is compared with the model the gate had kept before it (round 0
  at first): a kept round agrees if its test AUC did not fall, a rolled-back one if it fell.
  A gate slice too small to tell a round's relabels from retraining noise shows here as
  agreement near one half. None without a gate.
  """
  kept_auc, decisions = rounds[0]["test"].get("auc"), []
  for r in rounds[1:]:
    gate, auc = r.get("gate"), r["test"].get("auc")
    if gate is None or auc is None or kept_auc is None:
      continue
    decisions.append(bool(gate["accepted"]) == (auc >= kept_auc))
    if gate["accepted"]:
      kept_auc = auc
  return float(np.mean(decisions)) if decisions else None


def _reference_auc(report: dict, name: str) -> float | None:
  return report.get("references", {}).get(name, {}).get("test", {}).get("auc")


def run_metrics(report: dict, run_dir: str, train_source: dict) -> dict:
  """The per-run numbers the benchmark aggregates, from one strategy's report."""
  rounds = report["rounds"]
  start, final = rounds[0], writer.final_round(report)
  changed = sum(r["selected"] for r in rounds)
  hits = sum(round(r["selected"] * r["precision"]) for r in rounds
             if r.get("precision") is not None)
  validation_auc = [r["validation"].get("auc") for r in rounds]
  test = final["test"]
  unchanged_auc = _reference_auc(report, "unchanged_labels")
  out = {
      "final_test_auc": test.get("auc"),
      "final_test_accuracy": test.get("accuracy"),
      "final_test_f1": test.get("f1"),
      "final_test_f1_at_threshold": test.get("f1_at_threshold", test.get("f1")),
      "final_test_accuracy_at_threshold": test.get("accuracy_at_threshold", test.get("accuracy")),
      "round0_test_auc": start["test"].get("auc"),
      "clean_test_auc": _reference_auc(report, "clean"),
      "unchanged_labels_test_auc": unchanged_auc,
      "recovered_share": writer.recovered_share(report),
      "changed": changed,
      "precision": hits / changed if changed else None,
      # Labels as the ledger leaves them (after any rollback): the final model's labels.
      "recall": rounds[-1].get("recall_cumulative"),
      "wrong_labels_remaining": rounds[-1].get("wrong_labels"),
      "corrupted_remaining": rounds[-1].get("corrupted_remaining"),
      "validation_never_fell": bool(all(b >= a for a, b in zip(validation_auc, validation_auc[1:]))),
      "final_not_below_round0": bool(test.get("auc", 0.0) >= start["test"].get("auc", 0.0)),
      "final_not_below_unchanged": (None if unchanged_auc is None
                                    else bool(test.get("auc", 0.0) >= unchanged_auc)),
      "gate_agreement": gate_agreement(rounds),
      "detection_auroc": None, "detection_auprc": None,
      "train_on_validation": bool(report.get("train_on_validation")),
  }
  scores_path = files.join(run_dir, "round_0", loop.SCORES_FILE)
  if files.exists(scores_path):
    saved = np.load(io.BytesIO(files.read_bytes(scores_path)))
    corrupted = dict(zip(train_source["example_id"].tolist(), train_source["is_corrupted"].tolist()))
    positive = np.array([corrupted[int(i)] for i in saved["example_id"]], bool)
    scores = np.nan_to_num(saved["score"], neginf=np.finfo(np.float64).min)
    out["detection_auroc"] = _finite_or_none(binary_auc(scores, positive))
    out["detection_auprc"] = _finite_or_none(average_precision(scores, positive))
  return out


def aggregate(runs: dict, strategies: list[str], seeds: list[int], num_resamples: int = 10000,
              bootstrap_seed: int = 0) -> dict:
  """{"strategies": {name: {metric: mean/std/values}}, "paired": ..., "references": ...}
  from runs[seed][strategy] = run_metrics(...)."""
  keys = [k for k, _, _ in METRICS] + ["final_test_accuracy_at_threshold", "changed",
                                       "corrupted_remaining"]
  out = {"strategies": {}, "paired": {}, "references": {}}
  for name in strategies:
    out["strategies"][name] = {
        k: _mean_std([_as_number(runs[s][name].get(k)) for s in seeds]) for k in keys}
  # Which strategies also trained on the validation examples (gin run.train_on_validation
  # or a "+validation" name): their round 0 and clean reference are trained on them too.
  out["train_on_validation"] = {name: bool(runs[seeds[0]][name].get("train_on_validation"))
                                for name in strategies}
  first = strategies[0]
  for ref in ("round0_test_auc", "clean_test_auc", "unchanged_labels_test_auc"):
    out["references"][ref] = _mean_std([runs[s][first].get(ref) for s in seeds])
  out["references"]["train_on_validation"] = out["train_on_validation"][first]
  # The baselines, and their same-clean-data controls when the suite runs them.
  out["baselines"] = list(BASELINES) + [base + compare_lib.WITH_VALIDATION for base in BASELINES
                                        if base + compare_lib.WITH_VALIDATION in strategies]
  for name in strategies:
    values = out["strategies"][name][PAIRED_METRIC]["values"]
    paired = {"metric": PAIRED_METRIC}
    for base in out["baselines"]:
      paired[f"vs_{base}"] = (paired_bootstrap(
          values, out["strategies"][base][PAIRED_METRIC]["values"], num_resamples,
          bootstrap_seed) if base in out["strategies"] else None)
    out["paired"][name] = paired
  return out


def summarize(runs: dict, strategies: list[str], seeds: list[int], suite: str, data,
              command: str | None = None, num_resamples: int = 10000,
              bootstrap_seed: int = 0, seeds_pending: list[int] = ()) -> dict:
  """benchmark.json's content from runs[seed][strategy] = run_metrics(...); `data` gives the
  task's name and label names; `seeds_pending`: the seeds still to run (a partial summary)."""
  return files.finite_json({
      "suite": suite,
      "task": data.task,
      "label_names": list(data.label_names),
      "command": command,
      "default_strategy": default_strategy(),
      "seeds": seeds,
      "seeds_pending": list(seeds_pending),
      "development_seeds": [s for s in seeds if s < 100],
      "strategies_run": strategies,
      "paired_metric": PAIRED_METRIC,
      "metrics": {k: what for k, _, what in METRICS},
      **aggregate(runs, strategies, seeds, num_resamples, bootstrap_seed),
      "runs": {str(s): runs[s] for s in seeds},
  })


def _as_number(value):
  if isinstance(value, bool):
    return float(value)
  return value


@gin.configurable(denylist=["output_dir", "seeds_override", "command"])
def benchmark(output_dir: str, strategies: list[str] = gin.REQUIRED,
              seeds: tuple[int, ...] = gin.REQUIRED, seeds_override: list[int] | None = None,
              vary_train_seed: bool = True, num_resamples: int = 10000, bootstrap_seed: int = 0,
              name: str | None = None, command: str | None = None) -> dict:
  """Runs the suite; writes benchmark.json, benchmark.md and benchmark.png; returns the JSON.

  Args:
    output_dir: the benchmark's directory (refused if it holds a different config).
    strategies: gin `benchmark.strategies`, the strategies to run on every seed.
    seeds: gin `benchmark.seeds`, corruption seeds (>= 100: for reporting; tune on others).
    seeds_override: `--seeds`, replaces `seeds`.
    vary_train_seed: also set `train_prompt.seed` to the corruption seed.
    num_resamples, bootstrap_seed: the paired bootstrap's draws (see paired_bootstrap).
    name: the suite's name in the report (default: the output directory's name).
    command: the command line, recorded in the report.
  """
  seeds = [int(s) for s in (seeds_override or seeds)]
  strategies = list(strategies)
  if not seeds or len(set(seeds)) != len(seeds):
    raise UserError(f"benchmark seeds {seeds}: give at least one, each once")
  if not strategies or len(set(strategies)) != len(strategies):
    raise UserError(f"benchmark.strategies {strategies}: give at least one, each once")
  for strategy in strategies:
    compare_lib.parse_strategy(strategy)  # unknown names fail before any training
  check_output_dir_free(output_dir)
  # The suite's config as given (before the per-seed bindings below): what a rerun matches.
  # Without the seeds and strategies: a rerun may list more (benchmark.json says which ran).
  config_text = config_lib.recorded_config()
  _bind_seed(seeds[0], vary_train_seed)
  experiment = build_experiment()  # the data and settings checked before output_dir is touched
  from gbair_jax.report import benchmark_writer  # pylint: disable=g-import-not-at-top
  suite = name or files.basename(output_dir.rstrip("/"))
  runs = {}
  with claim_output_dir(output_dir, config_text):
    # The files are rewritten after every seed: a benchmark of hours shows the seeds done
    # so far (benchmark.md says which are pending) and a killed one leaves them.
    for seed, seed_runs in _run_seeds(output_dir, strategies, seeds, vary_train_seed, experiment):
      runs[seed] = seed_runs
      summary = summarize(runs, strategies, list(runs), suite, experiment.data, command,
                          num_resamples, bootstrap_seed, seeds_pending=seeds[len(runs):])
      if distributed.is_primary():
        files.write_json(files.join(output_dir, "benchmark.json"), summary)
        markdown = benchmark_writer.write(output_dir, summary)
  if distributed.is_primary():
    print(markdown)
    print(f"benchmark: {files.join(output_dir, 'benchmark.md')}")
  return summary


def _bind_seed(seed: int, vary_train_seed: bool) -> None:
  with gin.unlock_config():
    gin.bind_parameter("corrupt_labels.seed", seed)
    if vary_train_seed:
      gin.bind_parameter("train_prompt.seed", seed)


def _run_seeds(output_dir: str, strategies: list[str], seeds: list[int],
               vary_train_seed: bool, experiment):
  """One `compare` per corruption seed, in order; yields (seed, {strategy: run_metrics(...)}).
  `experiment` is the first seed's (already bound); later seeds reload the data only."""
  for i, seed in enumerate(seeds):
    if i:  # same model and weights; only the corrupted labels (and training seed) change
      _bind_seed(seed, vary_train_seed)
      experiment = dataclasses.replace(
          experiment, data=load_data(sequence_length=experiment.sequence_length))
    if distributed.is_primary():
      count = f"{len(strategies)} {'strategy' if len(strategies) == 1 else 'strategies'}"
      print(f"benchmark: corruption seed {seed} ({count})", flush=True)
    seed_dir = files.join(output_dir, f"seed_{seed}")
    results = compare_lib.compare(seed_dir, strategies, experiment=experiment, progress=False)
    train_source = experiment.data.splits["train"]
    yield seed, {name: run_metrics(report, files.join(seed_dir, name), train_source)
                 for name, report in results.items()}
