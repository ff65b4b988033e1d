"""What `gbair data describe` prints: examples and label counts per split, corruption, samples.

`describe` builds the JSON-ready dict (printed as is with --json); `format_description`
renders it as a small table for people.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from gbair_jax.data.dataset import LabeledData

NUM_SAMPLES = 3
_SAMPLE_CHARS = 100


def describe(data: LabeledData) -> dict[str, Any]:
  """{"task", "splits": {split: {num_examples, label_counts, num_corrupted, flips, samples}}}.

  Label counts use the current labels, keyed by label name; samples are the first three
  rows of each split (the source order, so the same in every run).
  """
  splits = {}
  for name, columns in data.splits.items():
    labels = columns["label"]
    counts = np.bincount(labels, minlength=len(data.label_names)) if labels.size else (
        np.zeros(len(data.label_names), np.int64))
    samples = []
    for row in range(min(NUM_SAMPLES, labels.size)):
      samples.append({
          "example_id": int(columns["example_id"][row]),
          "text": str(columns["text"][row]),
          "label": data.label_names[int(labels[row])],
          "original_label": data.label_names[int(columns["original_label"][row])],
          "is_corrupted": bool(columns["is_corrupted"][row]),
      })
    splits[name] = {
        "num_examples": int(labels.size),
        "label_counts": {label_name: int(count)
                         for label_name, count in zip(data.label_names, counts)},
        "num_corrupted": int(np.count_nonzero(columns["is_corrupted"])),
        "flips": flips(columns, data.label_names),
        "samples": samples,
    }
  return {"task": data.task, "rows_read": dict(data.rows_read), "splits": splits}


def format_rows_read(rows_read: dict[str, int]) -> list[str]:
  """One line per data file: how many rows it gave (fewer than expected = a parsing trap)."""
  return [f"read {rows} rows from {path}" for path, rows in rows_read.items()]


def flips(columns: dict[str, np.ndarray], label_names) -> dict[str, int]:
  """Wrong labels per (clean class, current class): {"insult -> not insult": n, ...},
  only the pairs that occur, in class order."""
  wrong = columns["label"] != columns["original_label"]
  if not wrong.any():
    return {}
  pairs = np.stack([columns["original_label"][wrong], columns["label"][wrong]], 1)
  unique, counts = np.unique(pairs, axis=0, return_counts=True)
  return {f"{label_names[int(clean)]} -> {label_names[int(new)]}": int(count)
          for (clean, new), count in zip(unique, counts)}


def _clip(text: str) -> str:
  text = " ".join(text.split())  # one line per sample, whatever the text holds
  return text if len(text) <= _SAMPLE_CHARS else text[:_SAMPLE_CHARS - 1] + "\u2026"


def format_description(description: dict[str, Any]) -> str:
  """A readable table of `describe`'s dict, then the samples of each split."""
  splits = description["splits"]
  label_names = list(next(iter(splits.values()))["label_counts"]) if splits else []
  header = ["split", "examples", *label_names, "corrupted"]
  rows = [[name, str(info["num_examples"]),
           *(str(info["label_counts"][label]) for label in label_names),
           str(info["num_corrupted"])] for name, info in splits.items()]
  widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

  def line(cells):
    return "  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                     for i, (cell, width) in enumerate(zip(cells, widths))).rstrip()

  out = [f"task: {description['task']}", *format_rows_read(description.get("rows_read", {})),
         line(header), line(["-" * w for w in widths])]
  out += [line(row) for row in rows]
  for name, info in splits.items():
    if info.get("flips"):
      out.append(f"{name} flips (clean -> current label): " + ", ".join(
          f"{pair} {count}" for pair, count in info["flips"].items()))
  for name, info in splits.items():
    if info.get("samples"):
      out.append("")
      out.append(f"{name} samples:")
      for sample in info["samples"]:
        mark = f" (was {sample['original_label']})" if sample["is_corrupted"] else ""
        out.append(f"  [{sample['example_id']}] {sample['label']}{mark}: {_clip(sample['text'])}")
  return "\n".join(out)
