"""The ledger: `<output_dir>/ledger.jsonl`, one JSON line per label change G-BAIR makes.

The source data is never modified; a run's training labels at round r are the source
labels, plus corruption, plus the ledger lines of rounds < r. Appends are atomic (a new
file replaces the old one), so a killed run never leaves half a line.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from typing import Iterable, Mapping, Sequence

import numpy as np

from gbair_jax.data import table_files
from gbair_jax.errors import UserError

FILE_NAME = "ledger.jsonl"
_FIELDS = ("round", "example_id", "old_label", "new_label", "score", "strategy")


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
  """One label change: `new_label` None means the example was removed from training."""

  round: int
  example_id: int
  old_label: int
  new_label: int | None
  score: float | None
  strategy: str

  def to_json(self) -> str:
    """The entry as one JSON line (no newline); a non-finite score is written as null."""
    score = None if self.score is None or not math.isfinite(self.score) else float(self.score)
    return json.dumps({"round": int(self.round), "example_id": int(self.example_id),
                       "old_label": int(self.old_label),
                       "new_label": None if self.new_label is None else int(self.new_label),
                       "score": score, "strategy": str(self.strategy)})


def ledger_path(output_dir: str) -> str:
  """Where a run keeps its ledger."""
  return os.path.join(output_dir, FILE_NAME)


def _is_int(value: object) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _parse_line(line: str, where: str) -> LedgerEntry:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise UserError(f"{where}: not valid JSON ({e.msg})") from None
  if not isinstance(record, dict):
    raise UserError(f"{where}: expected a JSON object")
  missing = [name for name in _FIELDS if name not in record]
  if missing:
    raise UserError(f"{where}: missing field {missing[0]!r}")
  for name in ("round", "example_id", "old_label"):
    if not _is_int(record[name]):
      raise UserError(f"{where}, field {name!r}: expected an integer, got {record[name]!r}")
  if record["new_label"] is not None and not _is_int(record["new_label"]):
    raise UserError(f"{where}, field 'new_label': expected an integer or null")
  score = record["score"]
  if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
    raise UserError(f"{where}, field 'score': expected a number or null")
  return LedgerEntry(round=record["round"], example_id=record["example_id"],
                     old_label=record["old_label"], new_label=record["new_label"],
                     score=None if score is None else float(score),
                     strategy=str(record["strategy"]))


def read_ledger(path: str) -> list[LedgerEntry]:
  """The entries in file order; a missing file is an empty ledger (a fresh run)."""
  if not os.path.exists(path):
    return []
  text = table_files.read_text(path)
  entries = []
  for line_number, line in enumerate(text.split("\n"), start=1):
    if line.strip():
      entries.append(_parse_line(line, f"{path}, line {line_number}"))
  return entries


def append_ledger(path: str, entries: Iterable[LedgerEntry]) -> None:
  """Appends entries atomically: old lines + new lines go to a temp file that replaces `path`.

  A reader, or a run killed at any instant, sees either the old ledger or the new one.
  """
  entries = list(entries)
  if not entries:
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  old = b""
  if os.path.exists(path):
    with open(path, "rb") as f:
      old = f.read()
    if old and not old.endswith(b"\n"):
      old += b"\n"
  new = "".join(entry.to_json() + "\n" for entry in entries).encode("utf-8")
  fd, temp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(old + new)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temp_path, path)
  except BaseException:
    if os.path.exists(temp_path):
      os.remove(temp_path)
    raise
  try:  # make the rename itself durable
    dir_fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(dir_fd)
  except OSError:
    pass
  finally:
    os.close(dir_fd)


def apply_ledger(split: Mapping[str, np.ndarray], entries: Sequence[LedgerEntry],
                 before_round: int) -> dict[str, np.ndarray]:
  """The split with the relabels and removals of rounds < `before_round` applied.

  Only `label` changes (and rows disappear for removals); `original_label` and
  `is_corrupted` keep describing the data as loaded. The input is not modified.

  Args:
    split: columns with at least `example_id` and `label`.
    entries: ledger entries, in file order (later lines win).
    before_round: apply entries whose round is smaller.

  Returns:
    New columns.

  Raises:
    UserError: an entry names an example not in the split, or its `old_label` is not
      the example's label at that point (a ledger from a different run or data).
  """
  columns = {name: np.array(values, copy=True) for name, values in split.items()}
  index = {int(example_id): row for row, example_id in enumerate(columns["example_id"])}
  labels = columns["label"]
  keep = np.ones(labels.shape[0], dtype=bool)
  ordered = sorted((e for e in entries if e.round < before_round), key=lambda e: e.round)
  for entry in ordered:  # sorted() is stable: file order within a round
    row = index.get(int(entry.example_id))
    where = f"ledger entry of round {entry.round} for example {entry.example_id}"
    if row is None:
      raise UserError(f"{where}: no such example in this split (ledger from other data?)")
    if not keep[row]:
      raise UserError(f"{where}: the example was already removed")
    if int(labels[row]) != int(entry.old_label):
      raise UserError(f"{where}: old_label {entry.old_label} but the label is "
                      f"{int(labels[row])} (ledger from a different run?)")
    if entry.new_label is None:
      keep[row] = False
    else:
      labels[row] = entry.new_label
  if keep.all():
    return columns
  return {name: values[keep] for name, values in columns.items()}
