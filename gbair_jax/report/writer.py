"""report.json, report.md, the per-round audit of suspects, and the console table.

report.json holds the config, the task and its label names, the strategy, one summary per
round (selection, precision, label quality, metrics, timings) and the references (README:
"The main job"); report.md is the table a person reads first; plots.py draws its PNGs.
"""
from __future__ import annotations


import numpy as np

from gbair_jax.runtime import files


def _fmt(value, digits: int = 3) -> str:
  if value is None or (isinstance(value, float) and np.isnan(value)):
    return "-"
  return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_suspects(path: str, entries, train: dict, label_names) -> None:
  """One JSON line per changed example, with its text, so every change can be audited."""
  row_of = {int(i): n for n, i in enumerate(train["example_id"])}
  name = lambda label: None if label is None else label_names[label]
  lines = []
  for e in entries:
    row = row_of[e.example_id]
    lines.append(files.dumps_json({
        "example_id": e.example_id, "text": str(train["text"][row]),
        "old_label": name(e.old_label), "new_label": name(e.new_label), "score": e.score,
        "strategy": e.strategy, "was_corrupted": bool(train["is_corrupted"][row]),
        "original_label": name(int(train["original_label"][row]))}, indent=None) + "\n")
  files.write_text(path, "".join(lines))


ROUND_COLUMNS = ("round", "selected", "precision", "recall_cumulative", "corrupted_remaining",
                 "val acc", "test acc", "test f1", "test acc@t", "test f1@t", "test auc",
                 "train s", "score s")
# What "@t" means, for every table that shows it.
THRESHOLD_NOTE = ("test acc / test f1: at the argmax; @t: at the decision threshold on "
                  "p(class 1) that maximised F1 on validation (binary tasks; `threshold` in "
                  "report.json; '-' for more classes).")


def final_round(report: dict) -> dict:
  """The summary of the round whose model is the run's result: the last round, or with
  gated rounds the last accepted one (report.json `final_round`)."""
  wanted = report.get("final_round")
  found = [r for r in report["rounds"] if r["round"] == wanted]
  return found[0] if found else report["rounds"][-1]


def _round_name(r: dict) -> str:
  gate = r.get("gate")
  if gate is None:
    return str(r["round"])
  return f"{r['round']} ({'accepted' if gate['accepted'] else 'rejected by gate'})"


def _round_cells(r: dict) -> list[str]:
  return [_round_name(r), str(r["selected"]), _fmt(r.get("precision")),
          _fmt(r.get("recall_cumulative")), str(r.get("corrupted_remaining", "-")),
          _fmt(r["validation"].get("accuracy")), _fmt(r["test"].get("accuracy")),
          _fmt(r["test"].get("f1")), _fmt(r["test"].get("accuracy_at_threshold")),
          _fmt(r["test"].get("f1_at_threshold")), _fmt(r["test"].get("auc")),
          _fmt(r["seconds"]["train"], 0), _fmt(r["seconds"]["score"], 0)]


def format_round(r: dict) -> str:
  return "  ".join(f"{k}={v}" for k, v in zip(ROUND_COLUMNS, _round_cells(r)))


def markdown_table(header, rows) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def format_table(report: dict) -> str:
  """The per-round table, then the references, as markdown (also readable on a console)."""
  table = markdown_table(ROUND_COLUMNS, [_round_cells(r) for r in report["rounds"]])
  refs = [[name, _fmt(ref["test"].get("accuracy")), _fmt(ref["test"].get("f1")),
           _fmt(ref["test"].get("accuracy_at_threshold")), _fmt(ref["test"].get("f1_at_threshold")),
           _fmt(ref["test"].get("auc"))] for name, ref in report.get("references", {}).items()]
  if refs:
    table += "\n\n" + markdown_table(("reference", "test acc", "test f1", "test acc@t",
                                       "test f1@t", "test auc"), refs)
  return table


def recovered_share(report: dict, metric: str = "auc") -> float | None:
  """Share of the test `metric` lost to corruption that the final (accepted) round won back."""
  refs = report.get("references", {})
  if "clean" not in refs or not report["rounds"]:
    return None
  clean = refs["clean"]["test"].get(metric)
  start = report["rounds"][0]["test"].get(metric)
  final = final_round(report)["test"].get(metric)
  if None in (clean, start, final) or clean == start:
    return None
  return float((final - start) / (clean - start))


def write_report(output_dir: str, report: dict, label_names) -> None:
  """Writes report.json, report.md and the PNG plots (atomic file replaces)."""
  from gbair_jax.report import plots  # matplotlib only when a report is written
  report = dict(report)
  report["recovered_share_of_lost_auc"] = recovered_share(report, "auc")
  files.write_json(files.join(output_dir, "report.json"), report)  # NaN -> null
  figures = plots.plot_report(output_dir, report)
  changed = sum(r["selected"] for r in report["rounds"])
  # Removals (run.action remove or relabel_or_remove, a reviewer's drops); older runs: none.
  removed = sum(r.get("removed", 0) for r in report["rounds"])
  true_changes = sum(round(r["selected"] * r["precision"]) for r in report["rounds"]
                     if r.get("precision") is not None)
  md = [f"# G-BAIR report: {report['task']}", "",
        f"Strategy `{report['strategy']}`, action `{report['action']}`; "
        f"{report['num_train']} training examples, {report['num_corrupted']} corrupted; "
        f"labels: {', '.join(label_names)}.", "",
        format_table(report), "", THRESHOLD_NOTE, "",
        f"Labels changed over all rounds: {changed}"
        + (f" ({removed} of them by removing the example)" if removed else "")
        + f", of which truly corrupted: {true_changes}"
        + (f" ({true_changes / changed:.0%})." if changed else ".") + _rollback_note(report),
        f"Share of the test AUC lost to corruption that the final round recovered: "
        f"{_fmt(report['recovered_share_of_lost_auc'])}.", ""]
  md += calibration_section(output_dir, report, label_names)
  md += [f"![{name}]({files.basename(path)})" for name, path in figures.items()]
  md += ["", "Audit every change in `round_<r>/suspects.jsonl`; the ledger is `ledger.jsonl`.", ""]
  md += review_section(report)
  files.write_text(files.join(output_dir, "report.md"), "\n".join(md))
  _write_tensorboard(output_dir, report)


def _rollback_note(report: dict) -> str:
  """What the gate undid: the final model trained without those changes."""
  rolled_back = sum((r.get("gate") or {}).get("rolled_back", 0) for r in report["rounds"])
  if not rolled_back:
    return ""
  # After the last round's rollback the labels are the ones the final model trained on.
  remaining = report["rounds"][-1].get("corrupted_remaining")
  fixed = "" if remaining is None else (
      f", which fix {report['num_corrupted'] - remaining} of the {report['num_corrupted']} "
      "corrupted labels")
  return (f" The gate rolled back {rolled_back} of them; the final model (round "
          f"{report['final_round']}) trained on the rest{fixed}.")


# Each round's estimate of `class_vote_calibrated` (recovery/vote_calibration.py writes it).
CALIBRATION_FILE = "calibration.json"


def calibration_section(output_dir: str, report: dict, label_names) -> list[str]:
  """What `class_vote_calibrated` estimated in each round (round_<r>/calibration.json):
  how many wrong labels each class holds, and how many examples it found likelier wrong than
  right. Nothing for other strategies."""
  rows = []
  for r in report["rounds"]:
    path = files.join(output_dir, f"round_{r['round']}", CALIBRATION_FILE)
    if not files.exists(path):
      continue
    for cell in files.read_json(path)["cells"]:
      rows.append([str(r["round"]), label_names[cell["label"]], label_names[cell["other"]],
                   str(cell["examples"]),
                   "-" if cell["estimated_wrong"] is None else f"{cell['estimated_wrong']:.1f}",
                   str(cell["suspects"])])
  if not rows:
    return []
  return ["## What the calibrated vote estimated", "",
          markdown_table(("round", "label", "other class", "examples", "estimated wrong",
                          "suspects (posterior > min_posterior)"), rows), "",
          "A round changes at most its budget of the suspects, most likely wrong first; "
          "`-`: the voters could not calibrate that class, so it had no suspects.", ""]


REVIEW_COLUMNS = ("round", "suspects", "decided", "accept", "reject", "relabel", "drop",
                  "right", "fixed", "broken", "strategy would be right")


def review_section(report: dict) -> list[str]:
  """report.md's "review a round" section: how to, and how each reviewed round went."""
  lines = ["## Review a round", "",
           "`gbair run ... --review` pauses each recovery round after selection, before any "
           "label changes; `gbair review --output_dir=DIR` opens the suspects with their "
           "evidence in the browser (127.0.0.1), each decision is a `human:<kind>` ledger line, "
           "and rerunning the command retrains on them (README: \"Review a round\").", ""]
  reviewed = [r for r in report["rounds"] if r.get("review")]
  if not reviewed:
    return lines + ["No round of this run was reviewed.", ""]
  rows = []
  for r in reviewed:
    v = r["review"]
    rows.append([str(r["round"]), str(v.get("suspects", "-")), str(v["decisions"]),
                 str(v["accept"]), str(v["reject"]), str(v["relabel"]), str(v["drop"]),
                 f"{v['right']}" + (f" ({v['accuracy']:.0%})" if v["accuracy"] is not None else ""),
                 str(v["fixed"]), str(v["broken"]), str(v.get("automatic_right_on_decided", "-"))])
  return lines + [markdown_table(REVIEW_COLUMNS, rows), "",
                  "right: the decision left the example at its true label, or dropped a "
                  "corrupted one (the page never shows the ground truth; `gbair review --score` "
                  "prints the same); strategy would be right: the automatic action on the same "
                  "examples.", ""]


def _write_tensorboard(output_dir: str, report: dict) -> None:
  writer = files.tensorboard_writer(files.join(output_dir, "tensorboard"))
  for r in report["rounds"]:
    scalars = {f"test/{k}": v for k, v in r["test"].items() if v is not None}
    scalars.update({f"validation/{k}": v for k, v in r["validation"].items() if v is not None})
    scalars["selected"] = r["selected"]
    scalars["recall_cumulative"] = r.get("recall_cumulative", 0.0)
    if r.get("precision") is not None:
      scalars["precision"] = r["precision"]
    writer.write_scalars(r["round"], scalars)
  writer.flush()
