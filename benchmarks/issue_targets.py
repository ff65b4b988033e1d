"""Do finished `gbair benchmark` suites meet issue 12's targets? One verdict per target.

  .venv/bin/python benchmarks/issue_targets.py runs/bench/insults_uniform_ens3 \
      runs/bench/insults_class_conditional_ens3 ... [--markdown]

Reads each directory's benchmark.json (one setting each) and judges the suite's default
strategy (`default_strategy`, the one `gbair run` uses) against the issue's targets:

  mean_at_or_above_baselines  its mean final test AUC >= `loss`'s and >= `confident_learning`'s
                              in every setting;
  intervals_above_zero        both paired 95% intervals (against `loss` and against
                              `confident_learning`) above zero in at least three settings;
  recovered_share             >= 0.8 of the lost test AUC recovered on insults uniform (the
                              suite named `insults_uniform`: it needs the `clean` reference);
  no_run_below_round0         no run whose final test AUC is below its round 0.

Each is "met", "not met", or "not measured" where a baseline, reference or setting a target
needs was not run and the rest cannot decide it (the settings: insults uniform,
class-conditional and instance-dependent, Rotten Tomatoes uniform, and one task with more
than two classes). Prints the per-setting table (markdown with
--markdown), then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

# The baselines whose paired intervals benchmark.json holds (`paired.<name>.vs_<baseline>`).
from gbair_jax.recovery.benchmark import BASELINES
RECOVERED_SHARE_SUITE, RECOVERED_SHARE_TARGET = "insults_uniform", 0.8
SETTINGS_WITH_INTERVALS_ABOVE_ZERO = 3
MIN_SEEDS = 5  # "on the suite over 5 seeds"
# The settings the issue names; "more than two classes" is any suite of a task with three or more.
REQUIRED_SUITES = ("insults_uniform", "insults_class_conditional", "insults_instance_dependent",
                   "rotten_tomatoes_uniform")


def load(benchmark_dir: str) -> dict:
  path = os.path.join(benchmark_dir, "benchmark.json")
  if not os.path.exists(path):
    raise SystemExit(f"issue_targets: {path} does not exist (is {benchmark_dir} a finished "
                     "`gbair benchmark` directory?)")
  with open(path) as f:
    summary = json.load(f)
  default = summary["default_strategy"]
  if default not in summary["strategies"]:
    raise SystemExit(f"issue_targets: {path}: the default strategy {default!r} was not run "
                     f"(strategies_run: {summary['strategies_run']})")
  summary["retrain"] = _retrain(os.path.join(benchmark_dir, "config.gin"))
  return summary


def _retrain(config_path: str) -> str:
  """`run.retrain` of the benchmark's saved config ("fresh" when unbound, its default), so a
  table never mixes warm-started and fresh suites unawares."""
  if os.path.exists(config_path):
    with open(config_path) as f:
      bound = re.search(r"^run\.retrain\s*=\s*['\"](\w+)['\"]", f.read(), re.MULTILINE)
    if bound:
      return bound.group(1)
  return "fresh"


def setting_row(summary: dict) -> dict:
  """What one setting's benchmark.json says about the default strategy."""
  default = summary["default_strategy"]
  strategies, paired = summary["strategies"], summary["paired"][default]
  runs = [per_seed[default] for per_seed in summary["runs"].values()]
  return {
      "suite": summary["suite"],
      "classes": len(summary["label_names"]),
      "retrain": summary.get("retrain", "fresh"),
      "seeds": summary["seeds"],
      "seeds_pending": summary.get("seeds_pending", []),
      "default": default,
      "mean": {name: strategies[name]["final_test_auc"]["mean"] if name in strategies else None
               for name in (default,) + BASELINES},
      "paired": {base: paired.get(f"vs_{base}") for base in BASELINES},
      "recovered_share": strategies[default]["recovered_share"]["mean"],
      "runs_below_round0": sum(not run["final_not_below_round0"] for run in runs),
      "runs": len(runs),
  }


def _verdict(failed: bool, unknown: bool) -> str:
  return "not met" if failed else ("not measured" if unknown else "met")


def missing_settings(rows: list[dict]) -> list[str]:
  """The issue's settings that no row covers."""
  suites = {row["suite"] for row in rows}
  missing = [suite for suite in REQUIRED_SUITES if suite not in suites]
  if not any(row["classes"] > 2 for row in rows):
    missing.append("a task with more than two classes")
  return missing


def verdicts(rows: list[dict]) -> dict:
  """Each target's verdict over the settings in `rows`; a setting the issue names and `rows`
  lack leaves the targets over every setting undecided unless a present one already fails."""
  missing = missing_settings(rows)
  at_or_above, missing_baseline = [], bool(missing)
  intervals_above_zero, intervals_unknown = 0, len(missing)
  for row in rows:
    mine = row["mean"][row["default"]]
    for base in BASELINES:
      if row["mean"][base] is None:
        missing_baseline = True
      else:
        at_or_above.append(mine >= row["mean"][base])
    lows = [(row["paired"][base] or {}).get("ci95", [None])[0] for base in BASELINES]
    if len(row["seeds"]) < MIN_SEEDS:  # the targets are over five seeds: too few decide nothing
      lows = [None if low is not None and low > 0 else low for low in lows]
    if all(low is not None and low > 0 for low in lows):
      intervals_above_zero += 1
    elif all(low is None or low > 0 for low in lows):
      intervals_unknown += 1  # a baseline not run: its interval could still clear zero
  share = [row["recovered_share"] for row in rows if row["suite"] == RECOVERED_SHARE_SUITE]
  share_known = bool(share) and share[0] is not None
  return {
      "mean_at_or_above_baselines": _verdict(not all(at_or_above), missing_baseline),
      "intervals_above_zero": _verdict(
          intervals_above_zero + intervals_unknown < SETTINGS_WITH_INTERVALS_ABOVE_ZERO,
          intervals_above_zero < SETTINGS_WITH_INTERVALS_ABOVE_ZERO),
      "recovered_share": _verdict(share_known and share[0] < RECOVERED_SHARE_TARGET,
                                  not share_known),
      "no_run_below_round0": _verdict(any(row["runs_below_round0"] for row in rows),
                                      bool(missing)),
      "settings_with_intervals_above_zero": intervals_above_zero,
      "missing_settings": missing,
  }


def _number(value, signed: bool = False) -> str:
  return "-" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")


def _interval(paired: dict | None) -> str:
  if not paired or paired.get("mean_diff") is None:
    return "-"
  low, high = paired["ci95"]
  text = f"{_number(paired['mean_diff'], True)} [{_number(low, True)}, {_number(high, True)}]"
  return f"**{text}**" if low > 0 else text


def table(rows: list[dict]) -> str:
  lines = ["| setting (seeds) | default | loss | CL | default - loss [95% CI] | "
           "default - CL [95% CI] | recovered share | default runs below round 0 |",
           "|---|---|---|---|---|---|---|---|"]
  for row in rows:
    seeds = ",".join(str(s) for s in row["seeds"])
    pending = f"; {len(row['seeds_pending'])} pending" if row["seeds_pending"] else ""
    mean = row["mean"]
    lines.append(
        f"| {row['suite']} ({row['retrain']}; {seeds}{pending}) | {_number(mean[row['default']])} | "
        f"{_number(mean['loss'])} | {_number(mean['confident_learning'])} | "
        f"{_interval(row['paired']['loss'])} | {_interval(row['paired']['confident_learning'])} | "
        f"{_number(row['recovered_share'])} | {row['runs_below_round0']} of {row['runs']} |")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("benchmark_dirs", nargs="+")
  parser.add_argument("--markdown", action="store_true", help="print the table and verdicts")
  args = parser.parse_args(argv)
  rows = [setting_row(load(d)) for d in args.benchmark_dirs]
  result = verdicts(rows)
  if args.markdown:
    print(table(rows))
    print()
    for target, verdict in result.items():
      print(f"- {target}: {verdict}")
  print(json.dumps({"benchmark": "issue_targets", "settings": rows, "verdicts": result}))


if __name__ == "__main__":
  main(sys.argv[1:])
