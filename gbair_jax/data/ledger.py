"""The ledger: `<output_dir>/ledger.jsonl`, one JSON line per label change G-BAIR makes.

The source data is never modified; a run's training labels at round r are the source
labels, plus corruption, plus the ledger lines of rounds < r. A removal (`new_label` null)
is final, except for a gated round's rollback line (strategy ROLLBACK), which puts the
example back with its label. Appends write the whole file
at once, so a killed run never leaves half a line; a torn last line from elsewhere (a
partial copy) is found on every read.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Iterable, Mapping, Sequence

import numpy as np

from gbair_jax.data import table_files
from gbair_jax.errors import UserError
from gbair_jax.runtime import files

FILE_NAME = "ledger.jsonl"
# The strategy of the lines a gated round writes to undo the round before it
# (recovery/gate.py): the only lines that may bring a removed example back.
ROLLBACK = "gate_rollback"
_FIELDS = ("round", "example_id", "old_label", "new_label", "score", "strategy")
_ROUND_PREFIX = re.compile(r'^\s*\{\s*"round"\s*:\s*(\d+)\s*,')


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
  return files.join(output_dir, FILE_NAME)


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
  if record["round"] < 0:
    raise UserError(f"{where}, field 'round': expected a round >= 0, got {record['round']}")
  if record["new_label"] is not None and not _is_int(record["new_label"]):
    raise UserError(f"{where}, field 'new_label': expected an integer or null")
  score = record["score"]
  if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
    raise UserError(f"{where}, field 'score': expected a number or null")
  if not isinstance(record["strategy"], str):  # any name: strategies, human review, ...
    raise UserError(f"{where}, field 'strategy': expected a string")
  return LedgerEntry(round=record["round"], example_id=record["example_id"],
                     old_label=record["old_label"], new_label=record["new_label"],
                     score=None if score is None else float(score),
                     strategy=record["strategy"])


@dataclasses.dataclass(frozen=True)
class TornLine:
  """A last line cut off mid-way (no newline, not valid JSON): what a crash or a partial
  copy leaves. `round` is the round it names, when that part survived."""

  line_number: int
  text: str
  round: int | None


def check_ledger(path: str) -> tuple[list[LedgerEntry], TornLine | None]:
  """Every line parsed and checked; a torn last line is returned apart, not raised.

  Raises:
    UserError: any other bad line (named by file and line).
  """
  if not files.exists(path):
    return [], None
  text = table_files.read_text(path)
  lines = text.split("\n")
  torn = None
  if lines and lines[-1].strip():  # the file does not end with a newline
    try:
      json.loads(lines[-1])
    except json.JSONDecodeError:
      found = _ROUND_PREFIX.search(lines[-1])
      torn = TornLine(line_number=len(lines), text=lines[-1],
                      round=int(found.group(1)) if found else None)
      lines = lines[:-1]
  entries = []
  for line_number, line in enumerate(lines, start=1):
    if line.strip():
      entries.append(_parse_line(line, f"{path}, line {line_number}"))
  return entries, torn


def read_ledger(path: str) -> list[LedgerEntry]:
  """The entries in file order; a missing file is an empty ledger (a fresh run).

  Raises:
    UserError: a bad line, or a torn last line (rerunning the same `gbair run` repairs it).
  """
  entries, torn = check_ledger(path)
  if torn is not None:
    raise UserError(f"{path}, line {torn.line_number}: the last line is cut off (a crash or a "
                    "partial copy?); rerun the same `gbair run` command to repair it")
  return entries


def write_ledger(path: str, entries: Iterable[LedgerEntry]) -> None:
  """Replaces the ledger with `entries` (used to drop a torn line and what follows it)."""
  files.write_text(path, "".join(entry.to_json() + "\n" for entry in entries))


def append_ledger(path: str, entries: Iterable[LedgerEntry]) -> None:
  """Appends entries atomically: the whole new ledger replaces the old in one write.

  A reader, or a run killed at any instant, sees either the old ledger or the new one
  (local files: temp file + rename; object stores: one whole-object write). Callers that
  may run at the same time as a `gbair run` must hold the run directory's lock.

  Raises:
    UserError: the ledger's last line is cut off (appending would bury it mid-file).
  """
  entries = list(entries)
  if not entries:
    return
  old = files.read_bytes(path) if files.exists(path) else b""
  if old and not old.endswith(b"\n"):
    raise UserError(f"{path}: the last line is cut off (a crash or a partial copy?); rerun "
                    "the same `gbair run` command to repair it before appending")
  new = "".join(entry.to_json() + "\n" for entry in entries).encode("utf-8")
  files.makedirs(files.dirname(path))
  files.write_bytes(path, old + new)


def append_round(path: str, round_index: int, entries: Sequence[LedgerEntry]) -> None:
  """Appends the entries of round `round_index`, which the ledger must not hold yet:
  a round appended twice would change labels twice."""
  if any(entry.round == round_index for entry in read_ledger(path)):
    raise UserError(f"{path}: already holds entries of round {round_index}; refusing to "
                    "append them again (two processes on one output_dir?)")
  if any(entry.round != round_index for entry in entries):
    raise ValueError(f"entries of other rounds passed to append_round({round_index})")
  append_ledger(path, entries)


def apply_ledger(split: Mapping[str, np.ndarray], entries: Sequence[LedgerEntry],
                 before_round: int) -> dict[str, np.ndarray]:
  """The split with the relabels and removals of rounds < `before_round` applied.

  Only `label` changes (and rows disappear for removals, and come back for a ROLLBACK line
  on a removed example, with its `new_label`); `original_label` and
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
      if entry.strategy != ROLLBACK or entry.new_label is None:
        raise UserError(f"{where}: the example was already removed")
      keep[row] = True  # its label is still the one it was removed with (checked below)
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
