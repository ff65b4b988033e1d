"""Replays finished gated runs under other gate rules: which `GateConfig.noise_z` to choose.

Every gated round records its gate value and the standard error of its difference with the
accepted model (report.json, `rounds[r]["gate"]`), and each round's model was trained and
tested whatever the gate then decided. So a different rule can be replayed from the
reports alone, as long as it decides every round the way the run did, except possibly the
last: a different decision on the last round only changes which trained model is final.
A run whose replay differs on an earlier round would have gone on from another model,
which was never trained: it is counted as `diverged`, not guessed.

  .venv/bin/python benchmarks/gate_replay.py runs/dev/insults_uniform_s34 ... \
      --noise_z=0,0.5,1,2 [--strategies=class_vote_embedding]

Prints one JSON line: per noise_z, the replayable runs' mean final test AUC (and over the
runs every rule replays: `common`), how many end below their round 0, and how many
diverged; "off" accepts every round.
"""
from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np


def replay(report: dict, noise_z: float | None) -> int | None:
  """The final round of `report` under the rule (None: accept every round), or None when
  the rule decides a round before the last one differently from the run."""
  rounds = report["rounds"]
  accepted_round, accepted_value = 0, rounds[0]["gate"]["value"]
  for r in range(1, len(rounds)):
    gate = rounds[r]["gate"]
    noise = gate["noise"]
    if noise is None:  # no change to judge (runs before noise was always recorded: none)
      keep = True
    else:
      keep = noise_z is None or not gate["value"] < accepted_value - noise_z * noise
    if keep != gate["accepted"] and r < len(rounds) - 1:
      return None
    if keep:
      accepted_round, accepted_value = r, gate["value"]
  return accepted_round


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("benchmark_dirs", nargs="+")
  parser.add_argument("--noise_z", default="0,0.5,1,1.5,2")
  parser.add_argument("--strategies", default="", help="comma-separated; empty: every one")
  args = parser.parse_args()
  wanted = set(filter(None, args.strategies.split(",")))
  reports = []
  for directory in args.benchmark_dirs:
    for path in sorted(glob.glob(os.path.join(directory, "seed_*", "*", "report.json"))):
      strategy = os.path.basename(os.path.dirname(path))
      if wanted and strategy not in wanted:
        continue
      with open(path) as f:
        report = json.load(f)
      if any(r.get("gate") is None for r in report["rounds"]):
        continue  # an ungated run: nothing to replay
      reports.append((path, report))
  if not reports:
    raise SystemExit(f"no gated report.json under {' '.join(args.benchmark_dirs)}")

  rules = [("off", None)] + [(f"noise_z={z}", float(z)) for z in args.noise_z.split(",")]
  results = {}
  for name, noise_z in rules:
    finals, below, diverged, runs = [], 0, 0, {}
    for path, report in reports:
      final = replay(report, noise_z)
      key = os.path.relpath(os.path.dirname(path))
      if final is None:
        diverged += 1
        runs[key] = None
        continue
      auc = report["rounds"][final]["test"]["auc"]
      finals.append(auc)
      below += auc < report["rounds"][0]["test"]["auc"]
      runs[key] = {"final_round": final, "test_auc": round(auc, 4)}
    results[name] = {"mean_final_test_auc": float(np.mean(finals)) if finals else None,
                     "replayed": len(finals), "diverged": diverged,
                     "below_round_0": int(below), "runs": runs}
  # Means over different subsets are not comparable: also the runs every rule replays.
  common = [key for key in results["off"]["runs"]
            if all(rule["runs"][key] is not None for rule in results.values())]
  for rule in results.values():
    rule["mean_final_test_auc_common"] = (
        float(np.mean([rule["runs"][key]["test_auc"] for key in common])) if common else None)
  print(json.dumps({"runs": len(reports), "common": len(common), "rules": results}))


if __name__ == "__main__":
  main()
