"""The ledger: append/read round trip, atomic appends, and applying rounds < r to a split."""
import json
import os

import numpy as np
import pytest

from gbair_jax.data import ledger
from gbair_jax.data.ledger import LedgerEntry
from gbair_jax.errors import UserError


def _split():
  return {"example_id": np.array([10, 20, 30, 40], np.int64),
          "text": np.array(["a", "b", "c", "d"], object),
          "label": np.array([1, 0, 1, 0], np.int32),
          "original_label": np.array([0, 0, 1, 0], np.int32),
          "is_corrupted": np.array([True, False, False, False])}


def test_append_and_read_round_trip(tmp_path):
  path = ledger.ledger_path(str(tmp_path / "run"))
  assert ledger.read_ledger(path) == []
  first = [LedgerEntry(0, 10, 1, 0, 0.75, "tracin"), LedgerEntry(0, 30, 1, None, -2.5, "tracin")]
  second = [LedgerEntry(1, 20, 0, 1, float("nan"), "loss")]
  ledger.append_ledger(path, first)
  ledger.append_ledger(path, second)
  ledger.append_ledger(path, [])
  entries = ledger.read_ledger(path)
  assert entries[:2] == first
  assert entries[2].score is None and entries[2].new_label == 1
  lines = open(path, encoding="utf-8").read().splitlines()
  assert len(lines) == 3
  assert json.loads(lines[1]) == {"round": 0, "example_id": 30, "old_label": 1,
                                  "new_label": None, "score": -2.5, "strategy": "tracin"}
  assert os.listdir(tmp_path / "run") == ["ledger.jsonl"]  # no temp file left behind


def test_append_is_atomic_when_the_write_fails(tmp_path, monkeypatch):
  path = str(tmp_path / "ledger.jsonl")
  ledger.append_ledger(path, [LedgerEntry(0, 10, 1, 0, 1.0, "tracin")])
  before = open(path, "rb").read()

  def killed(*args):
    raise KeyboardInterrupt("killed between write and rename")

  monkeypatch.setattr(os, "replace", killed)
  with pytest.raises(KeyboardInterrupt):
    ledger.append_ledger(path, [LedgerEntry(1, 20, 0, 1, 2.0, "tracin")])
  assert open(path, "rb").read() == before
  assert os.listdir(tmp_path) == ["ledger.jsonl"]


def test_apply_relabels_and_removes_rounds_before(tmp_path):
  entries = [LedgerEntry(0, 10, 1, 0, 0.9, "tracin"),
             LedgerEntry(0, 40, 0, None, 0.8, "tracin"),
             LedgerEntry(1, 10, 0, 1, 0.7, "tracin"),
             LedgerEntry(2, 30, 1, 0, 0.6, "tracin")]
  split = _split()
  at_round_0 = ledger.apply_ledger(split, entries, before_round=0)
  for column in split:
    np.testing.assert_array_equal(at_round_0[column], split[column])
  at_round_1 = ledger.apply_ledger(split, entries, before_round=1)
  assert at_round_1["example_id"].tolist() == [10, 20, 30]
  assert at_round_1["label"].tolist() == [0, 0, 1]
  assert at_round_1["text"].tolist() == ["a", "b", "c"]
  assert at_round_1["original_label"].tolist() == [0, 0, 1]
  assert at_round_1["is_corrupted"].tolist() == [True, False, False]
  at_round_3 = ledger.apply_ledger(split, entries, before_round=3)
  assert at_round_3["label"].tolist() == [1, 0, 0]
  assert split["label"].tolist() == [1, 0, 1, 0]  # input untouched


def test_only_a_rollback_line_brings_a_removed_example_back():
  removal = LedgerEntry(0, 40, 0, None, 0.8, "loss")
  restore = LedgerEntry(1, 40, 0, 0, None, ledger.ROLLBACK)
  back = ledger.apply_ledger(_split(), [removal, restore], before_round=2)
  assert back["example_id"].tolist() == [10, 20, 30, 40] and back["label"].tolist() == [1, 0, 1, 0]
  assert ledger.apply_ledger(_split(), [removal, restore], before_round=1)["example_id"].tolist() == [
      10, 20, 30]
  # Any other line on a removed example (a human's drop is final) is a ledger error.
  with pytest.raises(UserError, match="example 40: the example was already removed"):
    ledger.apply_ledger(_split(), [removal, LedgerEntry(1, 40, 0, 1, None, "human:relabel")], 2)
  # The rollback must name the label the example was removed with.
  with pytest.raises(UserError, match="old_label 1 but the label is 0"):
    ledger.apply_ledger(_split(), [removal, LedgerEntry(1, 40, 1, 1, None, ledger.ROLLBACK)], 2)


def test_apply_rejects_a_ledger_from_other_data():
  with pytest.raises(UserError, match="example 99"):
    ledger.apply_ledger(_split(), [LedgerEntry(0, 99, 0, 1, 0.0, "tracin")], before_round=1)
  with pytest.raises(UserError, match="old_label 0"):
    ledger.apply_ledger(_split(), [LedgerEntry(0, 10, 0, 1, 0.0, "tracin")], before_round=1)


def test_read_names_the_bad_line(tmp_path):
  path = tmp_path / "ledger.jsonl"
  good = LedgerEntry(0, 10, 1, 0, 0.5, "tracin").to_json()
  path.write_text(good + "\n" + '{"round": 0, "example_id": "x"}' + "\n", encoding="utf-8")
  with pytest.raises(UserError, match=r"ledger.jsonl, line 2"):
    ledger.read_ledger(str(path))
