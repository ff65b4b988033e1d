"""Which strategy finds the corrupted labels? Precision@k of every selection strategy on one
trained round-0 model (the first selection G-BAIR makes), from one TracIn pass.

  .venv/bin/python benchmarks/selection_precision.py --gin_file=gin/runs/quickstart.gin \
      --output_dir=/tmp/selection [--ks=100,300]
trains round 0 in --output_dir (or reuses it: the trainer resumes) and prints one JSON
line: precision@k per strategy (share of the k top-scored training examples whose label
was corrupted), and the random expectation.
"""
from __future__ import annotations

import json
import os

import common


def main() -> None:
  p = common.parser(__doc__)
  p.add_argument("--output_dir", required=True)
  p.add_argument("--ks", default="100,300")
  args = p.parse_args()
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gbair_jax import config  # pylint: disable=g-import-not-at-top
  from gbair_jax.influence import tracin  # pylint: disable=g-import-not-at-top
  from gbair_jax.recovery import strategies  # pylint: disable=g-import-not-at-top
  from gbair_jax.recovery.context import RoundContext  # pylint: disable=g-import-not-at-top
  from gbair_jax.recovery.tracin_strategies import _ranks, _tiebreak  # pylint: disable=g-import-not-at-top
  from gbair_jax.train import batches, checkpoints  # pylint: disable=g-import-not-at-top
  from gbair_jax.train.experiment import build_experiment  # pylint: disable=g-import-not-at-top
  from gbair_jax.train.trainer import predict_logits, train_prompt  # pylint: disable=g-import-not-at-top

  config.parse_gin(args.gin_file or ["gin/runs/quickstart.gin"], args.gin_bindings)
  exp = build_experiment()
  splits = exp.tokenized_splits()
  round_dir = os.path.join(args.output_dir, "round_0")
  result = train_prompt(exp.spec, exp.frozen, splits, round_dir, progress=False)
  train, validation = splits["train"], splits["validation"]
  ctx = RoundContext(
      spec=exp.spec, frozen=exp.frozen, train=train, validation=validation,
      checkpoints=checkpoints.load_tracin_checkpoints(round_dir), final_prompt=result.prompt,
      train_logits=predict_logits(exp.spec, result.prompt, exp.frozen, train),
      validation_logits=predict_logits(exp.spec, result.prompt, exp.frozen, validation), seed=0,
      progress=False)
  queries = ctx.misclassified
  position = {int(i): n for n, i in enumerate(train["example_id"])}
  loss = strategies.current_label_losses(ctx)
  scores = {"loss": loss, "random": strategies.random_strategy(ctx),
            "confident_learning": strategies.confident_learning_strategy(ctx)}
  for name, normalize in (("", False), ("cosine_", True)):
    res = tracin.tracin_scores(
        exp.spec.example_losses, ctx.checkpoints, exp.frozen, batches.iterate_batches(train, 32),
        batches.iterate_batches(queries, 32), options=tracin.GradientOptions(normalize=normalize),
        top_k=100, progress=False)
    order = np.array([position[int(i)] for i in res.example_ids])
    negative = np.zeros(len(order))
    negative[order] = res.negative_influence
    mean = np.zeros(len(order))
    mean[order] = res.mean_influence
    if not normalize:
      self_influence = np.zeros(len(order))
      self_influence[order] = res.self_influence
      scores["self_influence"] = self_influence
    scores[f"{name}sum_negative"] = -negative
    scores[f"{name}mean_opposition"] = -mean
    for k in (10, 50, 100):
      count = np.zeros(len(order))
      for ids, vals in zip(res.opponent_ids[:, :k], res.opponent_scores[:, :k]):
        for i, v in zip(ids, vals):
          if v < 0 and int(i) in position:
            count[position[int(i)]] += 1
      scores[f"{name}count_top{k}"] = _tiebreak(count, -negative)
      if k == 50:
        scores[f"{name}count_top{k}_loss"] = _tiebreak(count, loss)
    # The `opposition_loss` aggregation of tracin_opponents.
    scores[f"{name}opposition_loss"] = _tiebreak(_ranks(-negative) + _ranks(loss), loss)
  corrupted = train["is_corrupted"]
  ks = [int(k) for k in args.ks.split(",")]
  out = {}
  for name, s in scores.items():
    s = np.where(np.isfinite(s), s, -np.inf)
    ranked = np.argsort(-s, kind="stable")
    out[name] = {f"p@{k}": round(float(corrupted[ranked[:k]].mean()), 3) for k in ks}
  print(json.dumps({"benchmark": "selection_precision", "num_train": int(len(corrupted)),
                    "num_corrupted": int(corrupted.sum()), "num_queries": int(len(queries["label"])),
                    "random_expectation": round(float(corrupted.mean()), 3),
                    "round0_test": result.metrics.get("test"), "precision": out,
                    **common.machine()}))


if __name__ == "__main__":
  main()
