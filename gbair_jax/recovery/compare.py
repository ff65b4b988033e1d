"""`gbair compare`: several strategies on one gin config and seed, one table and one plot.

Each strategy runs in `<output_dir>/<strategy>/`. Round 0 does not depend on the strategy,
so its checkpoints are trained once and copied; the clean reference is trained once too.
"""
from __future__ import annotations

import os
import shutil

import gin

from gbair_jax.recovery import loop
from gbair_jax.recovery.strategies import get_strategy
from gbair_jax.report import plots, writer
from gbair_jax.runtime import process as distributed
from gbair_jax.train.experiment import build_experiment, claim_output_dir


def compare(output_dir: str, strategies: list[str]) -> dict[str, dict]:
  for name in strategies:
    get_strategy(name)  # unknown names fail before any training
  claim_output_dir(output_dir, gin.config_str() + f"\n# strategies: {','.join(strategies)}\n")
  experiment = build_experiment()
  results = {}
  first_dir = None
  for i, name in enumerate(strategies):
    run_dir = os.path.join(output_dir, name)
    if first_dir is not None:
      if distributed.is_primary():
        _share_round_zero(first_dir, run_dir)
      distributed.barrier(f"round 0 shared with {name}")
    # The clean reference is the same for every strategy: train it with the first only.
    extra = {} if i == 0 else {"references": ("no_recovery",)}
    results[name] = loop.run(run_dir, strategy=name, experiment=experiment, **extra)
    first_dir = first_dir or run_dir
  clean = results[strategies[0]]["references"].get("clean")
  rows = []
  for name, report in results.items():
    final, start = report["rounds"][-1], report["rounds"][0]
    changed = sum(r["selected"] for r in report["rounds"])
    hits = sum(round(r["selected"] * r["precision"]) for r in report["rounds"]
               if r.get("precision") is not None)
    if clean:
      report = {**report, "references": {**report["references"], "clean": clean}}
    share = writer.recovered_share(report)
    rows.append([name, str(changed), f"{hits / changed:.3f}" if changed else "-",
                 str(final.get("corrupted_remaining")), f"{start['test']['auc']:.3f}",
                 f"{final['test']['auc']:.3f}", f"{final['test']['accuracy']:.3f}",
                 f"{final['test']['f1']:.3f}", "-" if share is None else f"{share:.2f}"])
  header = ("strategy", "changed", "precision", "corrupted left", "round-0 auc", "final auc",
            "final acc", "final f1", "recovered share of lost auc")
  table = writer.markdown_table(header, rows)
  if clean:
    table += (f"\n\nclean reference: test auc {clean['test']['auc']:.3f}, accuracy "
              f"{clean['test']['accuracy']:.3f}, f1 {clean['test']['f1']:.3f}")
  if distributed.is_primary():  # several processes: all compute, process 0 writes
    plot = plots.plot_comparison(os.path.join(output_dir, "comparison.png"), results)
    with open(os.path.join(output_dir, "comparison.md"), "w") as f:
      f.write(f"# Strategy comparison\n\n{table}\n\n![test AUC by round]({os.path.basename(plot)})\n")
    print(table)
    print(f"comparison: {os.path.join(output_dir, 'comparison.md')}")
  return results


def _share_round_zero(source_run: str, target_run: str) -> None:
  """Copies round 0's checkpoints and metrics: same data, seed and config give the same
  training, so retraining it per strategy would only cost time."""
  source, target = os.path.join(source_run, "round_0"), os.path.join(target_run, "round_0")
  if os.path.exists(target):
    return
  os.makedirs(target)
  shutil.copytree(os.path.join(source, "checkpoints"), os.path.join(target, "checkpoints"))
  shutil.copy(os.path.join(source, "metrics.json"), os.path.join(target, "metrics.json"))
