"""`gbair compare`: several strategies on one gin config and seed, one table and one plot.

Each strategy runs in `<output_dir>/<strategy>/`. Round 0 does not depend on the strategy,
so its checkpoints are trained once and copied; the references that train (clean, and
unchanged_labels with warm_start) are trained once too, by the first run, and shown in
every report. A rerun that lists more strategies adds them: the finished runs resume, and
the new ones copy the round 0 trained before.

A name with the suffix `+validation` (e.g. `loss+validation`) runs that strategy with
`run.train_on_validation=True`: every training run also sees the validation examples the
strategies see, with their clean labels. It is the control for a strategy that votes with
those labels (class_vote): the baselines get the same clean data. Such runs share their
own round 0 and their own clean reference (trained on the validation examples too). A name
without the suffix follows gin's `run.train_on_validation` (True in gin/runs/base.gin).
"""
from __future__ import annotations

import gin

from gbair_jax import config as config_lib
from gbair_jax.errors import UserError
from gbair_jax.recovery import loop
from gbair_jax.recovery.registry import get_strategy
from gbair_jax.recovery import actions
from gbair_jax.report import plots, writer
from gbair_jax.runtime import files
from gbair_jax.runtime import process as distributed
from gbair_jax.train import checkpoints
from gbair_jax.train.experiment import (Experiment, build_experiment, check_output_dir_free,
                                        claim_output_dir)


WITH_VALIDATION = "+validation"
SHARED_REFERENCES = ("clean", "unchanged_labels")  # trained by the first run, copied to all


def parse_strategy(name: str) -> tuple[str, bool]:
  """(registered strategy name, train_on_validation) of a compared name; unknown ones fail.

  A name without the suffix trains on validation as gin's `run.train_on_validation` says.
  """
  base = name[:-len(WITH_VALIDATION)] if name.endswith(WITH_VALIDATION) else name
  get_strategy(base)
  return base, base != name or _bound_train_on_validation()


def _bound_train_on_validation() -> bool:
  try:
    return bool(gin.query_parameter("run.train_on_validation"))
  except ValueError:  # not bound: loop.run's default
    return False


def compare(output_dir: str, strategies: list[str], experiment: Experiment | None = None,
            progress: bool = True) -> dict[str, dict]:
  """Runs every strategy (round 0 and the clean reference shared); returns {name: report}.

  `experiment`: the data and model to use (the benchmark passes one per corruption seed);
  built from gin when None. `progress=False` prints no table.
  """
  if not strategies:
    raise UserError("--strategies: give at least one strategy")
  for name in strategies:
    parse_strategy(name)  # unknown names fail before any training
  check_output_dir_free(output_dir)
  checkpoints.checkpoint_dir(files.join(output_dir, strategies[0], "round_0"))
  # Data and settings checked before output_dir is touched.
  experiment = experiment or build_experiment()
  actions.selection_size(len(experiment.data.splits["train"]["label"]))
  # Recorded without the strategies: a rerun may add some.
  with claim_output_dir(output_dir, config_lib.recorded_config(), experiment.data):
    return _compare(output_dir, strategies, experiment, progress)


def _compare(output_dir: str, strategies: list[str], experiment,
             progress: bool = True) -> dict[str, dict]:
  results = {}
  first_dirs = {}  # train_on_validation -> the run whose round 0 the others with it copy
  shared = {}      # train_on_validation -> that run's trained references ({} if none)
  # Runs already started go first, in the order given: a rerun that adds strategies shares
  # the round 0 and references trained before, wherever it lists the new ones.
  started = lambda name: files.exists(files.join(output_dir, name, "round_0"))
  for name in sorted(strategies, key=lambda name: not started(name)):
    run_dir = files.join(output_dir, name)
    strategy, train_on_validation = parse_strategy(name)
    first = train_on_validation not in first_dirs
    if not first:
      if distributed.is_primary():
        _share_round_zero(first_dirs[train_on_validation], run_dir)
      distributed.barrier(f"round 0 shared with {name}")
    # The trained references depend only on the data and round 0: the first run with the
    # same data (with or without the validation examples) trains them.
    extra = {"train_on_validation": train_on_validation}
    if not first:
      extra["references"] = ("no_recovery",)
    results[name] = loop.run(run_dir, strategy=strategy, experiment=experiment, **extra)
    if first:
      first_dirs[train_on_validation] = run_dir
      shared[train_on_validation] = {ref: results[name]["references"][ref] for ref in
                                     SHARED_REFERENCES if ref in results[name]["references"]}
  results = {name: results[name] for name in strategies}  # the tables follow the given order
  rows = []
  for name, report in results.items():
    final, start = writer.final_round(report), report["rounds"][0]
    changed = sum(r["selected"] for r in report["rounds"])
    hits = sum(round(r["selected"] * r["precision"]) for r in report["rounds"]
               if r.get("precision") is not None)
    refs = shared[report["train_on_validation"]]
    if refs:  # trained once per kind of data: every report shows them
      report = results[name] = {**report, "references": {**report["references"], **refs}}
    share = writer.recovered_share(report)
    f1_at_t = final["test"].get("f1_at_threshold")
    rows.append([name, str(changed), f"{hits / changed:.3f}" if changed else "-",
                 str(report["rounds"][-1].get("corrupted_remaining")), f"{start['test']['auc']:.3f}",
                 f"{final['test']['auc']:.3f}", f"{final['test']['accuracy']:.3f}",
                 f"{final['test']['f1']:.3f}", "-" if f1_at_t is None else f"{f1_at_t:.3f}",
                 "-" if share is None else f"{share:.2f}"])
  header = ("strategy", "changed", "precision", "corrupted left", "round-0 auc", "final auc",
            "final acc", "final f1", "final f1@t", "recovered share of lost auc")
  table = writer.markdown_table(header, rows) + "\n\n" + writer.THRESHOLD_NOTE
  for with_validation, refs in shared.items():
    clean = refs.get("clean")
    if clean:
      table += (f"\n\nclean reference{' (with the validation examples)' if with_validation else ''}"
                f": test auc {clean['test']['auc']:.3f}, accuracy "
                f"{clean['test']['accuracy']:.3f}, f1 {clean['test']['f1']:.3f}")
    unchanged = refs.get("unchanged_labels")
    if unchanged:
      table += (f"\n\nround 0 trained on as long without a change (unchanged_labels): test auc "
                f"{unchanged['test']['auc']:.3f}")
  if distributed.is_primary():  # several processes: all compute, process 0 writes
    plot = plots.plot_comparison(files.join(output_dir, "comparison.png"), results)
    files.write_text(files.join(output_dir, "comparison.md"),
                     f"# Strategy comparison\n\n{table}\n\n"
                     f"![test AUC by round]({files.basename(plot)})\n")
    if progress:
      print(table)
      print(f"comparison: {files.join(output_dir, 'comparison.md')}")
  return results


def _share_round_zero(source_run: str, target_run: str) -> None:
  """Copies round 0's checkpoints and metrics: same data, seed and config give the same
  training, so retraining it per strategy would only cost time."""
  source, target = files.join(source_run, "round_0"), files.join(target_run, "round_0")
  if files.exists(target):
    return
  files.makedirs(target)
  files.copytree(checkpoints.checkpoint_dir(source), checkpoints.checkpoint_dir(target))
  files.write_bytes(files.join(target, "metrics.json"),
                    files.read_bytes(files.join(source, "metrics.json")))
