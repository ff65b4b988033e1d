"""Human decisions on a round's proposals: one ledger line each, appended under a lock.

A decision is a ledger line of the paused round whose `strategy` is `human:<kind>`:

  accept   the proposed label (or removal, when the round's action is remove)
  reject   the label stays as it was: old_label == new_label, but the line marks the
           example as reviewed, so the automatic rounds never select it again
  relabel  another label the reviewer picks
  drop     removed from training (new_label null); final, a later line cannot restore it

Changing one's mind appends another line whose old_label is the label the previous
decision set, so `apply_ledger` (file order within a round) ends at the last decision.
Every decision reads the ledger, checks and appends one line while holding an exclusive
`fcntl` lock on `<output_dir>/ledger.jsonl.lock`: two browser tabs, or two servers,
deciding at once cannot interleave. When the run goes on past a paused round it first
closes the review under the same lock (`round_<r>/review_closed.json`), so no decision
lands after the run has read the ledger.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from typing import Iterator, Sequence

from gbair_jax.data import ledger as ledger_lib
from gbair_jax.data.ledger import LedgerEntry

HUMAN = "human"
KINDS = ("accept", "reject", "relabel", "drop")
LOCK_FILE = ledger_lib.FILE_NAME + ".lock"
CLOSED_FILE = "review_closed.json"


class DecisionError(Exception):
  """A decision that cannot be taken; `status` is the HTTP status the server answers."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def is_human(entry: LedgerEntry) -> bool:
  return entry.strategy == HUMAN or entry.strategy.startswith(HUMAN + ":")


def kind_of(entry: LedgerEntry) -> str:
  """The decision a human line records (`human:<kind>`; a bare or unknown kind is read
  from the labels)."""
  kind = entry.strategy.partition(":")[2]
  if kind in KINDS:
    return kind
  if entry.new_label is None:
    return "drop"
  return "reject" if entry.new_label == entry.old_label else "relabel"


@contextlib.contextmanager
def ledger_lock(output_dir: str) -> Iterator[None]:
  """An exclusive lock on the run's ledger for read-check-append (threads and processes)."""
  fd = os.open(os.path.join(output_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _round_dir(output_dir: str, round_index: int) -> str:
  return os.path.join(output_dir, f"round_{round_index}")


def is_closed(output_dir: str, round_index: int) -> bool:
  return os.path.exists(os.path.join(_round_dir(output_dir, round_index), CLOSED_FILE))


def close_review(output_dir: str, round_index: int) -> None:
  """Ends the review of a round: later decisions get a 409 (the run is going on)."""
  path = os.path.join(_round_dir(output_dir, round_index), CLOSED_FILE)
  with ledger_lock(output_dir):
    if os.path.exists(path):
      return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump({"round": int(round_index), "closed_at": time.time()}, f)
    os.replace(tmp, path)


def closed_reason(output_dir: str, round_index: int) -> str | None:
  """Why decisions on a round are closed, or None (read under the lock by `decide`)."""
  if is_closed(output_dir, round_index) or os.path.exists(
      os.path.join(_round_dir(output_dir, round_index), "round.json")):
    return (f"round {round_index} is closed: the run went on past the review "
            "(its decisions are in the ledger)")
  return None


def round_decisions(entries: Sequence[LedgerEntry], round_index: int) -> dict[int, dict]:
  """example id -> {"decision", "label" (final label id or None), "lines"} of the human
  lines of one round, the last line of each example winning."""
  out: dict[int, dict] = {}
  for entry in entries:
    if entry.round == round_index and is_human(entry):
      previous = out.get(entry.example_id)
      out[entry.example_id] = {"decision": kind_of(entry), "label": entry.new_label,
                               "lines": (previous["lines"] if previous else 0) + 1}
  return out


def automatic_entries(entries: Sequence[LedgerEntry], round_index: int) -> list[LedgerEntry]:
  return [e for e in entries if e.round == round_index and not is_human(e)]


def normalize(kind: str, label: int | None, current: int, proposed: int | None,
              num_labels: int) -> tuple[str, int | None]:
  """(kind, target label) of a request; a relabel to the current label is a reject."""
  if kind not in KINDS:
    raise DecisionError(400, f"decision must be one of {', '.join(KINDS)}, got {kind!r}")
  if kind == "accept":
    return kind, proposed
  if kind == "reject":
    return kind, current
  if kind == "drop":
    return kind, None
  if label is None or not 0 <= label < num_labels:
    raise DecisionError(400, "relabel needs a label, one of the round's label names")
  if label == current:
    return "reject", current
  return kind, label


def decide(output_dir: str, round_index: int, suspect: dict, kind: str, label: int | None,
           num_labels: int, closed_check=None) -> dict:
  """Appends the ledger line of one decision; returns the example's decision state.

  Args:
    output_dir: the run.
    round_index: the paused round.
    suspect: {"example_id": int, "label": current label id, "proposed": id or None,
      "score": float}.
    kind, label: the request (label only for relabel).
    num_labels: how many classes.
    closed_check: called under the lock; returns a message when decisions are closed.

  Raises:
    DecisionError: 400 on a bad request, 409 when the ledger no longer allows it.
  """
  kind, target = normalize(kind, label, suspect["label"], suspect["proposed"], num_labels)
  example_id = int(suspect["example_id"])
  path = ledger_lib.ledger_path(output_dir)
  with ledger_lock(output_dir):
    closed = closed_check() if closed_check else None
    if closed:
      raise DecisionError(409, closed)
    entries = ledger_lib.read_ledger(path)
    if automatic_entries(entries, round_index):
      raise DecisionError(409, f"round {round_index} already has the automatic strategy's "
                          "changes in the ledger: it was not paused for review")
    state = round_decisions(entries, round_index).get(example_id)
    current = suspect["label"] if state is None else state["label"]
    if state is not None and current is None:
      raise DecisionError(409, f"example {example_id} was dropped; a drop is final")
    if state is not None and state["decision"] == kind and current == target:
      return state  # the same decision again: nothing to write
    ledger_lib.append_ledger(path, [LedgerEntry(
        round=round_index, example_id=example_id, old_label=current, new_label=target,
        score=suspect.get("score"), strategy=f"{HUMAN}:{kind}")])
    return {"decision": kind, "label": target,
            "lines": (state["lines"] if state else 0) + 1}
