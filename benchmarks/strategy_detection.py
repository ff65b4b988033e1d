"""How well does each strategy rank the corrupted labels of one round-0 model? For tuning a
strategy's knobs on a development seed without running whole benchmark rounds.

  .venv/bin/python benchmarks/strategy_detection.py \
      --gin_file=gin/benchmarks/insults_class_conditional.gin --seed=1 \
      --output_dir=/tmp/detection_cc_1 --strategies=class_vote_knn,loss,first_order_gain \
      [--sweep=first_order_gain_strategy.damping=0.1,1,10,1000]
      (string values too: --sweep=class_vote_embedding_strategy.voters=validation,validation_and_train)
trains round 0 of `gbair run` as the suite configures it (gate slice, validation examples
in training, ...), with `corrupt_labels.seed` and `train_prompt.seed` = --seed as
`gbair benchmark` binds them, then scores that one model with every strategy (and every
value of the --sweep binding, for the strategies it belongs to) and stops before any label
changes. Rerunning with the same --output_dir reuses the trained round 0. Prints one JSON
line: per strategy (variant), detection AUROC and AUPRC of its scores against the
corruption mask (-inf as the lowest score), the number of suspects (finite scores), and the
precision of its first `budget` picks (the suite's selection size).
Use seeds < 100: the reporting seeds are for `gbair benchmark` only.
"""
from __future__ import annotations

import json

import common


def _parse_value(text: str):
  """A --sweep value: an int, a float, or else the string itself."""
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


class _Scored(Exception):
  """Raised by the probe strategy once every score is in: ends the run before any change."""


def main() -> None:
  p = common.parser(__doc__)
  p.add_argument("--output_dir", required=True)
  p.add_argument("--seed", type=int, required=True)
  p.add_argument("--strategies", default="class_vote_knn,loss")
  p.add_argument("--sweep", default=None, help="configurable.parameter=v1,v2,...")
  p.add_argument("--scores_out", default=None,
                 help="also save every variant's scores and the corruption mask (.npz)")
  args = p.parse_args()
  if args.seed >= 100:
    raise SystemExit(f"--seed={args.seed}: seeds >= 100 are for reporting; tune on others")
  import gin  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gbair_jax import config  # pylint: disable=g-import-not-at-top
  from gbair_jax.recovery import actions, loop  # pylint: disable=g-import-not-at-top
  from gbair_jax.recovery.registry import get_strategy, register  # pylint: disable=g-import-not-at-top
  from gbair_jax.train.metrics import average_precision, binary_auc  # pylint: disable=g-import-not-at-top

  names = [s for s in args.strategies.split(",") if s]
  for name in names:
    get_strategy(name)  # unknown names fail before any training
  sweep_binding, sweep_values = None, [None]
  if args.sweep:
    sweep_binding, values = args.sweep.split("=", 1)
    sweep_values = [_parse_value(v) for v in values.split(",")]
  found, all_scores = {}, {}

  @register("detection_probe")
  def probe(ctx):
    truth = np.asarray(ctx.train["is_corrupted"], bool)
    budget = actions.selection_size(len(truth))
    for name in names:
      configurable = sweep_binding.rsplit(".", 1)[0] if sweep_binding else None
      variants = sweep_values if configurable in (name, f"{name}_strategy") else [None]
      for value in variants:
        label = name if value is None else f"{name}[{sweep_binding.split('.')[-1]}={value}]"
        if value is not None:
          with gin.unlock_config():
            gin.bind_parameter(sweep_binding, value)
        scores = all_scores[label] = np.asarray(get_strategy(name)(ctx), np.float64)
        finite = np.isfinite(scores)
        ranked = np.nan_to_num(scores, neginf=np.finfo(np.float64).min)
        picks = np.argsort(-ranked, kind="stable")[:min(budget, int(finite.sum()))]
        found[label] = {
            "detection_auroc": round(float(binary_auc(ranked, truth)), 4),
            "detection_auprc": round(float(average_precision(ranked, truth)), 4),
            "suspects": int(finite.sum()),
            "precision_at_budget": round(float(truth[picks].mean()), 4) if len(picks) else None}
    found["_"] = {"budget": budget, "corrupted": int(truth.sum()), "train": len(truth)}
    all_scores["_is_corrupted"] = truth
    raise _Scored()

  # The data configs take the corruption seed through this macro; gbair benchmark binds the
  # same two parameters per seed.
  config.parse_gin(args.gin_file, args.gin_bindings + [
      f"CORRUPTION_SEED = {args.seed}", f"train_prompt.seed = {args.seed}",
      "run.num_rounds = 1", "run.references = ()", "run.strategy = 'detection_probe'"])
  try:
    loop.run(args.output_dir, progress=False)
  except _Scored:
    pass
  summary = found.pop("_")
  if args.scores_out:
    np.savez(args.scores_out, **all_scores)
  print(json.dumps({"benchmark": "strategy_detection", "gin_file": args.gin_file,
                    "seed": args.seed, **summary, "strategies": found, **common.machine()}))


if __name__ == "__main__":
  main()
