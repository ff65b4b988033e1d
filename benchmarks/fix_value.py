"""Which right relabels raise AUC? A finished benchmark's first rounds, strategy by strategy.

For every seed directory of a `gbair benchmark` that ran `loss` (its round-0 scores are the
round-0 model's loss of every training example, the same model for every strategy of the
seed), and for each strategy: how many of its round-0 changes were right (flipped labels)
and wrong, the mean loss percentile of each kind under the round-0 model, and what its
round 1 gained in test AUC over round 0 trained on as long without a change (the
`unchanged_labels` reference's first stage; warm_start benchmarks only).

  .venv/bin/python benchmarks/fix_value.py runs/bench/rotten_tomatoes_uniform_warm

Prints one JSON line: per strategy, per seed and as means over seeds.
"""
from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np


def _percentiles(scores_path: str) -> dict[int, float]:
  """Example id -> rank of its score / N (0: lowest loss)."""
  saved = np.load(scores_path)
  ranks = np.argsort(np.argsort(saved["score"], kind="stable")) / len(saved["score"])
  return dict(zip(saved["example_id"].tolist(), ranks.tolist()))


def _first_round(run_dir: str, loss_percentile: dict[int, float], unchanged_auc: float) -> dict:
  with open(os.path.join(run_dir, "round_0", "suspects.jsonl")) as f:
    changes = [json.loads(line) for line in f if line.strip()]
  with open(os.path.join(run_dir, "report.json")) as f:
    rounds = json.load(f)["rounds"]
  right = [loss_percentile[c["example_id"]] for c in changes if c["was_corrupted"]]
  wrong = [loss_percentile[c["example_id"]] for c in changes if not c["was_corrupted"]]
  return {"right": len(right), "wrong": len(wrong),
          "right_loss_percentile": float(np.mean(right)) if right else None,
          "wrong_loss_percentile": float(np.mean(wrong)) if wrong else None,
          "round1_minus_unchanged_auc": rounds[1]["test"]["auc"] - unchanged_auc}


def fix_value(benchmark_dir: str) -> dict:
  out: dict[str, dict] = {}
  for seed_dir in sorted(glob.glob(os.path.join(benchmark_dir, "seed_*"))):
    loss_scores = os.path.join(seed_dir, "loss", "round_0", "scores.npz")
    stage = glob.glob(os.path.join(seed_dir, "*", "references", "unchanged_labels", "stage_1",
                                   "metrics.json"))
    if not os.path.exists(loss_scores) or not stage:
      continue  # a seed without `loss` or the unchanged_labels reference, or unfinished
    with open(stage[0]) as f:
      unchanged_auc = json.load(f)["test"]["auc"]
    percentile = _percentiles(loss_scores)
    for run_dir in sorted(glob.glob(os.path.join(seed_dir, "*", "report.json"))):
      run_dir = os.path.dirname(run_dir)
      per_seed = out.setdefault(os.path.basename(run_dir), {})
      per_seed[os.path.basename(seed_dir)] = _first_round(run_dir, percentile, unchanged_auc)
  summary = {}
  for strategy, seeds in out.items():
    means = {key: float(np.mean([s[key] for s in seeds.values() if s[key] is not None]))
             for key in next(iter(seeds.values()))}
    summary[strategy] = {"seeds": seeds, "mean": means}
  return summary


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("benchmark_dir")
  print(json.dumps(fix_value(parser.parse_args().benchmark_dir)))


if __name__ == "__main__":
  main()
