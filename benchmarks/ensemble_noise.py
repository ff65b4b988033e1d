"""How much of a round's measured effect is retraining noise, and how much a seed ensemble
(train_prompt.ensemble_size) removes.

  .venv/bin/python benchmarks/ensemble_noise.py --gin_file=gin/benchmarks/insults_uniform.gin \
      --seed=3 --train_seeds=8 --fix=40 --output_dir=/tmp/ensemble_noise

Two label sets of one corrupted training set (development corruption seed `--seed`): A, the
corrupted labels, and B, A with `--fix` randomly chosen corrupted labels put right (a round
of relabels at precision 1). Each is trained under training seeds 0..K-1 as one prompt (the
benchmark's setting: gate slice held out, the rest of validation trained on). Then for
ensembles of 1..4 of those prompts (every subset of the K seeds, mean class probabilities)
it reports the mean and std of test and gate-slice AUC for A and B, and of the paired effect
B - A (both on the same seeds), and every single prompt's test AUC. Trained prompts are kept
in --output_dir: a rerun only predicts. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--gin_file", action="append", required=True)
  p.add_argument("--gin_bindings", action="append", default=[])
  p.add_argument("--seed", type=int, default=3, help="corruption seed (development: < 100)")
  p.add_argument("--train_seeds", type=int, default=8)
  p.add_argument("--fix", type=int, default=40, help="corrupted labels put right in B")
  p.add_argument("--output_dir", required=True)
  p.add_argument("--leave_out", default="", help="comma-separated training seeds trained but "
                 "left out of the ensembles (e.g. one whose prompt collapsed)")
  args = p.parse_args()
  left_out = {int(s) for s in args.leave_out.split(",") if s}

  from gbair_jax.main import import_tensorflow_quietly  # pylint: disable=g-import-not-at-top
  import_tensorflow_quietly()
  import gin  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gbair_jax import config  # pylint: disable=g-import-not-at-top
  from gbair_jax.recovery import gate as gate_lib  # pylint: disable=g-import-not-at-top
  from gbair_jax.recovery.context import with_extra_rows  # pylint: disable=g-import-not-at-top
  from gbair_jax.train.experiment import build_experiment  # pylint: disable=g-import-not-at-top
  from gbair_jax.train.metrics import classification_metrics, softmax  # pylint: disable=g-import-not-at-top
  from gbair_jax.train.trainer import predict_logits, train_prompt  # pylint: disable=g-import-not-at-top

  config.parse_gin(args.gin_file, args.gin_bindings + [f"CORRUPTION_SEED = {args.seed}"])
  exp = build_experiment()
  splits = exp.tokenized_splits()
  validation, gate = gate_lib.split_gate(splits["validation"], gate_lib.GateConfig())
  train = splits["train"]
  fixed = np.random.default_rng(0).choice(np.flatnonzero(train["is_corrupted"]), args.fix,
                                          replace=False)
  label_sets = {"A": train["label"], "B": train["label"].copy()}
  label_sets["B"][fixed] = train["original_label"][fixed]

  probs = {}  # (label set, seed) -> {"test": [N, C], "gate": [M, C]}
  for name, labels in label_sets.items():
    for seed in range(args.train_seeds):
      round_dir = os.path.join(args.output_dir, f"{name}_{seed}")
      with gin.unlock_config():  # one prompt per training: the ensembles are formed below
        gin.bind_parameter("train_prompt.seed", seed)
        gin.bind_parameter("train_prompt.ensemble_size", 1)
      result = train_prompt(exp.spec, exp.frozen,
                            {"train": with_extra_rows({**train, "label": labels}, validation),
                             "validation": gate}, round_dir, progress=False)
      probs[name, seed] = {
          split: softmax(predict_logits(exp.spec, result.prompt, exp.frozen, arrays))
          for split, arrays in (("test", splits["test"]), ("gate", gate))}

  def auc(prob, labels):
    return classification_metrics(np.log(prob), labels)["auc"]

  def stats(values):
    return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values, ddof=1)), 4)}

  out = {"benchmark": "ensemble_noise", "gin_file": args.gin_file, "corruption_seed": args.seed,
         "train_seeds": args.train_seeds, "left_out": sorted(left_out), "fixed": args.fix,
         "single_test_auc": {name: [round(auc(probs[name, s]["test"], splits["test"]["label"]), 4)
                                    for s in range(args.train_seeds)] for name in ("A", "B")},
         "ensembles": {}}
  kept = [s for s in range(args.train_seeds) if s not in left_out]
  for size in (1, 2, 3, 4):
    subsets = list(itertools.combinations(kept, size))
    row = {"subsets": len(subsets)}
    for split, labels in (("test", splits["test"]["label"]), ("gate", gate["label"])):
      a, b = ([auc(np.mean([probs[name, s][split] for s in subset], 0), labels)
               for subset in subsets] for name in ("A", "B"))
      a, b = np.array(a), np.array(b)
      row[split] = {"A": stats(a), "B": stats(b), "B_minus_A": stats(b - a),
                    "share_B_above_A": round(float(np.mean(b > a)), 3)}
    out["ensembles"][str(size)] = row
  print(json.dumps(out))


if __name__ == "__main__":
  main()
