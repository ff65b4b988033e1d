"""How the reviewer did against the ground truth of synthetic corruption.

Only after a review: `gbair review --score` and the `review` block of round.json. The
page never sees `is_corrupted` / `original_label`; this module is where they are read.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from gbair_jax.review.decisions import round_decisions


def score_round(train_source: dict, entries: Sequence, round_index: int,
                proposals: dict | None = None) -> dict:
  """Counts of one reviewed round's decisions and how many of them were right.

  A decision is right when it leaves the example at its true label, or drops an example
  whose label was corrupted. `proposals` (the round's proposals.json) adds how the
  automatic action would have done on the same examples and the strategy's precision.
  """
  decided = round_decisions(entries, round_index)
  row = {int(i): n for n, i in enumerate(train_source["example_id"])}
  truth = train_source["original_label"]
  corrupted = train_source["is_corrupted"]
  counts = {kind: 0 for kind in ("accept", "reject", "relabel", "drop")}
  right = fixed = broken = missed = 0
  for example_id, state in decided.items():
    n = row[example_id]
    counts[state["decision"]] += 1
    if state["label"] is None:
      ok = bool(corrupted[n])
    else:
      ok = int(state["label"]) == int(truth[n])
      fixed += int(ok and corrupted[n])
      broken += int(not ok and not corrupted[n])
      missed += int(not ok and corrupted[n])
    right += int(ok)
  out = {"decisions": len(decided), **counts, "right": right,
         "accuracy": right / len(decided) if decided else None,
         "fixed": fixed, "broken": broken, "missed": missed}
  if proposals is not None:
    names = list(proposals["label_names"])
    suspects = proposals["suspects"]
    out["suspects"] = len(suspects)
    out["undecided"] = sum(1 for s in suspects if int(s["example_id"]) not in decided)
    out["strategy_precision"] = (float(np.mean([bool(corrupted[row[int(s["example_id"])]])
                                                for s in suspects])) if suspects else None)
    automatic_right = 0
    for s in suspects:
      if int(s["example_id"]) in decided:
        n = row[int(s["example_id"])]
        automatic_right += int(bool(corrupted[n]) if s["proposed"] is None
                               else names.index(s["proposed"]) == int(truth[n]))
    out["automatic_right_on_decided"] = automatic_right
  return out


def format_scores(scores: dict[int, dict]) -> str:
  """A small table: one line per reviewed round."""
  header = ("round", "decisions", "accept", "reject", "relabel", "drop", "right", "accuracy",
            "fixed", "broken", "missed", "auto right", "undecided")
  lines = ["  ".join(header)]
  for r, s in sorted(scores.items()):
    accuracy = "-" if s["accuracy"] is None else f"{s['accuracy']:.3f}"
    lines.append("  ".join(str(v) for v in (
        r, s["decisions"], s["accept"], s["reject"], s["relabel"], s["drop"], s["right"],
        accuracy, s["fixed"], s["broken"], s["missed"], s.get("automatic_right_on_decided", "-"),
        s.get("undecided", "-"))))
  return "\n".join(lines)
