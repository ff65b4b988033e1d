"""Which strategy finds the corrupted labels? Precision@k of every selection strategy on one
trained round-0 model (the first selection G-BAIR makes), from one TracIn pass.

  .venv/bin/python benchmarks/selection_precision.py --gin_file=gin/runs/quickstart.gin \
      --output_dir=/tmp/selection [--ks=80,160,240]
trains round 0 in --output_dir (or reuses it: the trainer resumes) and prints one JSON
line: precision@k per strategy (share of the k top-scored training examples whose label
was corrupted), and the random expectation. TracIn is scored once against every validation
example (full score matrix); each `tracin_opponents` aggregation is then computed on both
query sets, `validation` (all) and `misclassified` (the paper's), as the strategy does.
"""
from __future__ import annotations

import json
import os

import common


def main() -> None:
  p = common.parser(__doc__)
  p.add_argument("--output_dir", required=True)
  p.add_argument("--ks", default="80,160,240")
  args = p.parse_args()
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gbair_jax import config  # pylint: disable=g-import-not-at-top
  from gbair_jax.influence import tracin  # pylint: disable=g-import-not-at-top
  from gbair_jax.recovery import strategies  # pylint: disable=g-import-not-at-top
  from gbair_jax.recovery.context import RoundContext  # pylint: disable=g-import-not-at-top
  from gbair_jax.recovery.tracin_strategies import _ranks, _tiebreak, net_opposition  # pylint: disable=g-import-not-at-top
  from gbair_jax.train import batches, checkpoints  # pylint: disable=g-import-not-at-top
  from gbair_jax.train.experiment import build_experiment  # pylint: disable=g-import-not-at-top
  from gbair_jax.train.trainer import predict_logits, train_prompt  # pylint: disable=g-import-not-at-top

  config.parse_gin(args.gin_file or ["gin/runs/quickstart.gin"], args.gin_bindings)
  exp = build_experiment()
  splits = exp.tokenized_splits()
  round_dir = os.path.join(args.output_dir, "round_0")
  result = train_prompt(exp.spec, exp.frozen, splits, round_dir, progress=False, mesh=exp.mesh)
  train, validation = splits["train"], splits["validation"]
  ctx = RoundContext(
      spec=exp.spec, frozen=exp.frozen, train=train, validation=validation,
      checkpoints=checkpoints.load_tracin_checkpoints(round_dir), final_prompt=result.prompt,
      train_logits=predict_logits(exp.spec, result.prompt, exp.frozen, train, mesh=exp.mesh),
      validation_logits=predict_logits(exp.spec, result.prompt, exp.frozen, validation,
                                       mesh=exp.mesh), seed=0, progress=False, mesh=exp.mesh)
  loss = strategies.current_label_losses(ctx)
  scores = {"loss": loss, "random": strategies.random_strategy(ctx),
            "confident_learning": strategies.confident_learning_strategy(ctx)}

  by_length = lambda a: batches.iterate_batches(a, 32, batches.length_order(a), trim_multiple=16)
  res = tracin.tracin_scores(exp.spec.example_losses, ctx.checkpoints, exp.frozen,
                             by_length(train), by_length(validation), top_k=1,
                             keep_scores=True, mesh=exp.mesh, progress=False)
  train_row = {int(i): n for n, i in enumerate(train["example_id"])}
  rows = np.array([train_row[int(i)] for i in res.example_ids])
  matrix = np.zeros((len(rows), len(res.query_ids)))
  matrix[rows] = res.scores
  self_influence = np.zeros(len(rows))
  self_influence[rows] = res.self_influence
  scores["self_influence"] = self_influence
  query_row = {int(i): n for n, i in enumerate(validation["example_id"])}
  wrong = ctx.validation_logits.argmax(-1) != validation["label"]
  misclassified = np.array([wrong[query_row[int(i)]] for i in res.query_ids])
  for queries, columns in (("validation", np.ones_like(misclassified, bool)), ("misclassified", misclassified)):
    sub = matrix[:, columns]
    negative = np.minimum(sub, 0.0).sum(1)
    scores[f"tracin {queries} net_opposition"] = net_opposition(sub.mean(1), self_influence, loss)
    scores[f"tracin {queries} opposition_loss"] = _tiebreak(_ranks(-negative) + _ranks(loss), loss)
    scores[f"tracin {queries} sum_negative"] = -negative
    top50 = np.argsort(sub, axis=0, kind="stable")[:50]  # each query's 50 strongest opponents
    count = np.zeros(len(rows))
    for q in range(sub.shape[1]):
      opponents = top50[:, q][sub[top50[:, q], q] < 0]
      count[opponents] += 1
    scores[f"tracin {queries} count top-50"] = _tiebreak(count, -negative)
  corrupted = train["is_corrupted"]
  ks = [int(k) for k in args.ks.split(",")]
  out = {}
  for name, s in scores.items():
    s = np.where(np.isfinite(s), s, -np.inf)
    ranked = np.argsort(-s, kind="stable")
    out[name] = {f"p@{k}": round(float(corrupted[ranked[:k]].mean()), 3) for k in ks}
  print(json.dumps({"benchmark": "selection_precision", "num_train": int(len(corrupted)),
                    "num_corrupted": int(corrupted.sum()), "num_misclassified": int(wrong.sum()),
                    "random_expectation": round(float(corrupted.mean()), 3),
                    "round0_test": result.metrics.get("test"), "precision": out,
                    **common.machine()}))


if __name__ == "__main__":
  main()
