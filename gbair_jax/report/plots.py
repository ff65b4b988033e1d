"""PNG plots of a report: test metrics by round against the references, and detection
precision/recall by round. Headless (Agg backend)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top

from gbair_jax.runtime import files  # noqa: E402


def plot_report(output_dir: str, report: dict) -> dict[str, str]:
  """Writes the plots; returns {title: path}."""
  rounds = [r["round"] for r in report["rounds"]]
  paths = {}

  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for ax, metric in zip(axes, ("f1", "auc", "accuracy")):
    ax.plot(rounds, [r["test"].get(metric) for r in report["rounds"]], "o-", label="G-BAIR rounds")
    for name, style in (("clean", "g--"), ("no_recovery", "r:")):
      ref = report.get("references", {}).get(name)
      if ref and ref["test"].get(metric) is not None:
        ax.axhline(ref["test"][metric], color=style[0], linestyle=style[1:], label=name)
    ax.set_title(f"test {metric}")
    ax.set_xlabel("round")
    ax.set_xticks(rounds)
  axes[0].legend(fontsize=8)
  fig.suptitle(f"{report['task']}: {report['strategy']} / {report['action']}")
  fig.tight_layout()
  paths["test metrics by round"] = _save(fig, files.join(output_dir, "test_metrics.png"))

  scored = [r for r in report["rounds"] if r.get("precision") is not None]
  fig, ax = plt.subplots(figsize=(5, 3.6))
  ax.plot([r["round"] for r in scored], [r["precision"] for r in scored], "o-", label="precision")
  ax.plot([r["round"] for r in scored], [r["recall_cumulative"] for r in scored], "s-",
          label="cumulative recall")
  ax.set_ylim(0, 1)
  ax.set_xlabel("round")
  ax.set_xticks([r["round"] for r in scored])  # whole rounds, not 0.0, 0.2, ...
  ax.set_title("detection of corrupted labels")
  ax.legend(fontsize=8)
  fig.tight_layout()
  paths["precision and recall by round"] = _save(fig, files.join(output_dir, "detection.png"))
  return paths


def plot_comparison(path: str, results: dict[str, dict]) -> str:
  """Test AUC by round for several strategies on one axis."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for strategy, report in results.items():
    ax.plot([r["round"] for r in report["rounds"]], [r["test"].get("auc") for r in report["rounds"]],
            "o-", label=strategy)
  clean = next((r["references"].get("clean") for r in results.values()
                if r.get("references", {}).get("clean")), None)
  if clean:
    ax.axhline(clean["test"]["auc"], color="g", linestyle="--", label="clean")
  ax.set_xlabel("round")
  ax.set_xticks(sorted({r["round"] for report in results.values() for r in report["rounds"]}))
  ax.set_ylabel("test AUC")
  ax.legend(fontsize=8)
  fig.tight_layout()
  return _save(fig, path)


def _save(fig, path: str) -> str:
  files.save_figure(fig, path)
  plt.close(fig)
  return path
