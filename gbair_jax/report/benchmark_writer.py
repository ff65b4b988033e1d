"""benchmark.md and benchmark.png from benchmark.json's content (recovery/benchmark.py)."""
from __future__ import annotations

from gbair_jax.report import writer
from gbair_jax.runtime import files

# Metrics that are counts (shown without decimals) or shares of runs (no std).
_COUNTS = ("wrong_labels_remaining",)
_SHARES = ("validation_never_fell", "final_not_below_round0", "final_not_below_unchanged",
           "gate_agreement")


def _cell(stat: dict | None, key: str) -> str:
  if not stat or stat.get("mean") is None:
    return "-"
  if key in _SHARES:
    return f"{stat['mean']:.2f}"
  digits = 1 if key in _COUNTS else 3
  return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _paired_cell(paired: dict | None) -> str:
  if not paired or paired.get("mean_diff") is None:
    return "-"
  low, high = paired["ci95"]
  return f"{paired['mean_diff']:+.3f} [{low:+.3f}, {high:+.3f}]"


def format_markdown(summary: dict) -> str:
  from gbair_jax.recovery.benchmark import BASELINES, METRICS  # pylint: disable=g-import-not-at-top
  baselines = summary.get("baselines", BASELINES)
  strategies = summary["strategies_run"]
  default = summary["default_strategy"]
  label = lambda name: f"**{name}** (default)" if name == default else name
  lines = [f"# Benchmark: {summary['suite']} ({summary['task']})", ""]
  if summary.get("command"):
    lines += ["Command:", "", f"    {summary['command']}", ""]
  seeds = ", ".join(map(str, summary["seeds"]))
  refs = summary["references"]
  # run.references may leave the clean reference out: say only what was trained.
  has_clean = (refs.get("clean_test_auc") or {}).get("mean") is not None
  shared = "round 0 and the clean reference" if has_clean else "round 0"
  runs = len(summary["seeds"])
  lines.append(f"Corruption seeds: {seeds} ({runs} paired run{'s' if runs != 1 else ''} per "
               f"strategy; {shared} trained once per seed and shared).")
  pending = summary.get("seeds_pending") or []
  if pending:
    lines.append(f"**In progress**: seed{'s' if len(pending) != 1 else ''} "
                 f"{', '.join(map(str, pending))} not run yet; every number below covers the "
                 "seeds done only.")
  if summary.get("development_seeds"):
    lines.append(f"Seeds below 100 ({', '.join(map(str, summary['development_seeds']))}) are "
                 "development seeds: a smoke test or for tuning, not results to report.")
  label_names = summary.get("label_names") or []
  if len(label_names) > 2:
    lines += ["", f"{len(label_names)} classes ({', '.join(label_names)}): test AUC is the macro "
              "one-vs-rest ROC AUC, F1 the macro F1 at the argmax (no threshold, so F1@t = F1); "
              "relabels go to the model's most likely other class, and precision counts changed "
              "labels that were corrupted even when the new label is still wrong."]
  with_validation = summary.get("train_on_validation", {})
  lines += ["", f"References (test AUC): round 0 (no recovery) {_cell(refs['round0_test_auc'], '')}"
            + (f", clean labels {_cell(refs['clean_test_auc'], '')}" if has_clean else "")
            + ((" (both trained" if has_clean else " (trained") + " on the validation examples too)"
               if refs.get("train_on_validation") else "") + "."]
  unchanged = refs.get("unchanged_labels_test_auc")
  if unchanged and unchanged.get("mean") is not None:
    lines.append("Each round warm-starts from the last model (run.retrain = warm_start), so "
                 "the final model trained longer than round 0; "
                 + ("the clean reference trains as long, and " if has_clean else "")
                 + "round 0 trained on as long without a change (unchanged_labels) "
                 f"scores {_cell(unchanged, '')}: what the extra training alone brings.")
  if any(with_validation.values()):
    lines.append("Trained on the validation examples the strategies see, with their clean "
                 "labels, in every round (run.train_on_validation; each such group has its own "
                 f"{shared}): "
                 + ", ".join(name for name in strategies if with_validation.get(name)) + ".")
  lines.append("")
  header = ["strategy"] + [title for _, title, _ in METRICS]
  rows = [[label(name)] + [_cell(summary["strategies"][name].get(k), k) for k, _, _ in METRICS]
          for name in strategies]
  lines += [f"Mean ± standard deviation over seeds (shares of runs for the last {len(_SHARES)} "
            "columns):", "",
            writer.markdown_table(header, rows), ""]
  lines += [f"Paired differences in {summary['paired_metric']} (strategy minus baseline, mean "
            "over seeds [95% paired bootstrap interval]):", ""]
  paired_rows = [[label(name)] + [_paired_cell(summary["paired"][name].get(f"vs_{base}"))
                                  for base in baselines] for name in strategies]
  lines += [writer.markdown_table(["strategy"] + [f"vs {b}" for b in baselines], paired_rows), ""]
  lines += ["What the columns are:", ""]
  lines += [f"- {title}: {summary['metrics'].get(key, '')}" for key, title, _ in METRICS]
  lines += [f"- {writer.THRESHOLD_NOTE}", "",
            "![final test AUC per seed](benchmark.png)", "",
            "Each seed's runs: `seed_<s>/<strategy>/report.md`; side by side: "
            "`seed_<s>/comparison.md`.", ""]
  return "\n".join(lines)


def plot(path: str, summary: dict) -> str:
  """Final test AUC per strategy (one dot per seed, mean ± std), round-0 and clean means;
  right: paired differences against each baseline with their 95% intervals."""
  from gbair_jax.recovery.benchmark import BASELINES  # pylint: disable=g-import-not-at-top
  from gbair_jax.report import plots  # pylint: disable=g-import-not-at-top
  baselines = summary.get("baselines", BASELINES)
  plt = plots.plt
  strategies = summary["strategies_run"]
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
  for i, name in enumerate(strategies):
    stat = summary["strategies"][name]["final_test_auc"]
    values = [v for v in stat["values"] if v is not None]
    left.plot([i] * len(values), values, "o", alpha=0.5, color="C0")
    if stat["mean"] is not None:
      left.errorbar([i + 0.15], [stat["mean"]], yerr=[stat["std"]], fmt="s", color="C1")
  for key, style, title in (("round0_test_auc", "r:", "round 0"), ("clean_test_auc", "g--", "clean"),
                            ("unchanged_labels_test_auc", "k-.", "unchanged labels")):
    mean = summary["references"].get(key, {}).get("mean")
    if mean is not None:
      left.axhline(mean, color=style[0], linestyle=style[1:], label=f"{title} (mean)")
  left.set_xticks(range(len(strategies)))
  left.set_xticklabels(strategies, rotation=30, ha="right", fontsize=8)
  left.set_ylabel("final test AUC")
  left.legend(fontsize=8)
  for j, base in enumerate(baselines):
    labelled = False
    for i, name in enumerate(strategies):
      paired = summary["paired"][name].get(f"vs_{base}")
      if not paired or paired["mean_diff"] is None or name == base:
        continue
      low, high = paired["ci95"]
      x = i + (j - (len(baselines) - 1) / 2) * 0.2
      right.errorbar([x], [paired["mean_diff"]],
                     yerr=[[paired["mean_diff"] - low], [high - paired["mean_diff"]]], fmt="o",
                     color=f"C{j + 2}", label=None if labelled else f"vs {base}")
      labelled = True
  right.axhline(0.0, color="k", linewidth=0.8)
  right.set_xticks(range(len(strategies)))
  right.set_xticklabels(strategies, rotation=30, ha="right", fontsize=8)
  right.set_ylabel("paired difference in final test AUC")
  handles, labels = right.get_legend_handles_labels()
  if handles:
    right.legend(fontsize=8)
  fig.suptitle(f"{summary['suite']}: {len(summary['seeds'])} seeds")
  fig.tight_layout()
  return plots._save(fig, path)  # pylint: disable=protected-access


def write(output_dir: str, summary: dict) -> str:
  """Writes benchmark.md and benchmark.png; returns the markdown."""
  plot(files.join(output_dir, "benchmark.png"), summary)
  markdown = format_markdown(summary)
  files.write_text(files.join(output_dir, "benchmark.md"), markdown)
  return markdown
