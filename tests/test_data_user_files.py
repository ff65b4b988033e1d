"""Bring-your-own CSV/TSV/JSONL data through the `user_files` SeqIO task, and bad input.

Each bad input must stop with one `UserError` line naming the file, row and column (or
the gin binding) and write nothing.
"""
import json
import os

import gin
import numpy as np
import pytest

from gbair_jax.data import dataset
from gbair_jax.data import user_files
from gbair_jax.errors import UserError

LABELS = ("negative", "positive")


def _write_csv(path, rows, header=("text", "label"), delimiter=","):
  lines = [delimiter.join(header)] + [delimiter.join(row) for row in rows]
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(path)


def _rows(count, start=0):
  return [(f"review number {i}", LABELS[i % 2]) for i in range(start, start + count)]


def _bind(**bindings):
  gin.bind_parameter("user_files_options.label_names", LABELS)
  for name, value in bindings.items():
    gin.bind_parameter(f"user_files_options.{name}", value)


def _load():
  return dataset.load_data("user_files")


def _files_in(directory):
  return sorted(os.listdir(directory))


def test_csv_with_seeded_split(tmp_path):
  _bind(train_path=_write_csv(tmp_path / "data.csv", _rows(100)))
  data = _load()
  sizes = {name: len(split["label"]) for name, split in data.splits.items()}
  # 50 per class; 10% of each class to validation and to test.
  assert sizes == {"train": 80, "validation": 10, "test": 10}
  assert data.label_names == LABELS
  for split in data.splits.values():
    assert np.bincount(split["label"], minlength=2).tolist() == [
        len(split["label"]) // 2] * 2
  all_ids = np.concatenate([s["example_id"] for s in data.splits.values()])
  assert len(np.unique(all_ids)) == 100
  texts = sorted(t for s in data.splits.values() for t in s["text"])
  assert texts == sorted(f"review number {i}" for i in range(100))


def test_split_is_seeded_and_deterministic(tmp_path):
  _bind(train_path=_write_csv(tmp_path / "data.csv", _rows(100)))
  first = _load().splits["validation"]["example_id"]
  again = _load().splits["validation"]["example_id"]
  gin.bind_parameter("user_files_options.split_seed", 7)
  other_seed = _load().splits["validation"]["example_id"]
  np.testing.assert_array_equal(first, again)
  assert set(first.tolist()) != set(other_seed.tolist())


def test_separate_files_tsv_and_label_values(tmp_path):
  rows = [(f"text {i}", str(i % 2)) for i in range(6)]
  _bind(train_path=_write_csv(tmp_path / "train.tsv", rows, ("sentence", "y"), "\t"),
        validation_path=_write_csv(tmp_path / "valid.tsv", rows[:2], ("sentence", "y"), "\t"),
        test_path=_write_csv(tmp_path / "test.tsv", rows[:4], ("sentence", "y"), "\t"),
        text_column="sentence", label_column="y", label_values=("0", "1"))
  data = _load()
  assert [len(data.splits[s]["label"]) for s in ("train", "validation", "test")] == [6, 2, 4]
  assert data.splits["test"]["label"].tolist() == [0, 1, 0, 1]
  assert data.splits["test"]["text"].tolist() == ["text 0", "text 1", "text 2", "text 3"]
  # Same row numbers in different files are different examples.
  ids = np.concatenate([s["example_id"] for s in data.splits.values()])
  assert len(np.unique(ids)) == 12


def test_jsonl_with_id_column_and_integer_labels(tmp_path):
  path = tmp_path / "data.jsonl"
  records = [{"id": 1000 + i, "body": f"line {i}", "y": i % 2, "extra": [1]} for i in range(40)]
  path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
  _bind(train_path=str(path), text_column="body", label_column="y", label_values=(0, 1),
        id_column="id", validation_fraction=0.25, test_fraction=0.25)
  data = _load()
  assert [len(data.splits[s]["label"]) for s in ("train", "validation", "test")] == [20, 10, 10]
  train = data.splits["train"]
  by_id = dict(zip(train["example_id"].tolist(), train["text"].tolist()))
  assert all(by_id[i] == f"line {i - 1000}" for i in by_id)
  assert all(label == (i - 1000) % 2 for i, label in zip(train["example_id"], train["label"]))


def test_multiline_quoted_csv_text(tmp_path):
  path = tmp_path / "data.csv"
  path.write_text('text,label\n"first line\nsecond, line",positive\nplain,negative\n',
                  encoding="utf-8")
  _bind(train_path=str(path), validation_fraction=0.0, test_fraction=0.0)
  train = user_files.user_files_splits()["train"]  # load_data would refuse the empty splits
  assert train["text"].tolist() == ["first line\nsecond, line", "plain"]
  assert train["label"].tolist() == [1, 0]


# --- bad input: one line naming file, row and column (or the binding), nothing written ---


def _error(tmp_path) -> str:
  before = _files_in(tmp_path)
  with pytest.raises(UserError) as info:
    _load()
  # gin appends "In call to configurable ..." lines to anything raised through a
  # configurable; `gbair` prints the first line, which must say it all.
  message = str(info.value).splitlines()[0]
  assert _files_in(tmp_path) == before  # nothing written
  return message


def test_missing_file(tmp_path):
  _bind(train_path=str(tmp_path / "nope.csv"))
  message = _error(tmp_path)
  assert "nope.csv" in message and "not found" in message
  assert "user_files_options.train_path" in message


def test_missing_column(tmp_path):
  _bind(train_path=_write_csv(tmp_path / "d.csv", _rows(10), ("body", "label")))
  message = _error(tmp_path)
  assert "d.csv" in message and "'text'" in message
  assert "user_files_options.text_column" in message and "body" in message


def test_label_outside_label_names(tmp_path):
  rows = _rows(10)
  rows[6] = ("an odd one", "neutral")
  _bind(train_path=_write_csv(tmp_path / "d.csv", rows))
  message = _error(tmp_path)
  assert "d.csv, row 7, column 'label'" in message and "'neutral'" in message


def test_empty_text(tmp_path):
  rows = _rows(10)
  rows[3] = ("   ", "positive")
  _bind(train_path=_write_csv(tmp_path / "d.csv", rows))
  message = _error(tmp_path)
  assert "d.csv, row 4, column 'text'" in message and "empty text" in message


def test_empty_text_jsonl(tmp_path):
  path = tmp_path / "d.jsonl"
  path.write_text('{"text": "fine", "label": "negative"}\n{"text": "", "label": "positive"}\n',
                  encoding="utf-8")
  _bind(train_path=str(path))
  message = _error(tmp_path)
  assert "d.jsonl, row 2, column 'text'" in message and "empty text" in message


def test_undecodable_bytes_csv(tmp_path):
  path = tmp_path / "d.csv"
  path.write_bytes(b"text,label\nfine,positive\nbad \xff\xfe bytes,negative\n")
  _bind(train_path=str(path))
  message = _error(tmp_path)
  assert "d.csv, row 2, column 'text'" in message and "not UTF-8" in message


def test_undecodable_bytes_jsonl(tmp_path):
  path = tmp_path / "d.jsonl"
  path.write_bytes(b'{"text": "ok", "label": "negative"}\n{"text": "\xc3(", "label": "negative"}\n')
  _bind(train_path=str(path))
  message = _error(tmp_path)
  assert "d.jsonl, row 2" in message and "not UTF-8" in message


def test_duplicate_example_ids(tmp_path):
  rows = [("a", "negative", "1"), ("b", "positive", "2"), ("c", "negative", "1")]
  _bind(train_path=_write_csv(tmp_path / "d.csv", rows, ("text", "label", "id")),
        id_column="id", validation_fraction=0.0, test_fraction=0.0)
  message = _error(tmp_path)
  assert "duplicate example id 1" in message
  assert "d.csv, row 3, column 'id'" in message and "row 1" in message


def test_duplicate_ids_across_files(tmp_path):
  header = ("text", "label", "id")
  _bind(train_path=_write_csv(tmp_path / "train.csv", [("a", "negative", "x7")], header),
        validation_path=_write_csv(tmp_path / "valid.csv", [("b", "negative", "y")], header),
        test_path=_write_csv(tmp_path / "test.csv", [("c", "positive", "x7")], header),
        id_column="id")
  message = _error(tmp_path)
  assert "test.csv, row 1, column 'id'" in message and "train.csv, row 1" in message


def test_unset_bindings_are_named(tmp_path):
  with pytest.raises(UserError, match="user_files_options.train_path"):
    _load()
  gin.bind_parameter("user_files_options.train_path", _write_csv(tmp_path / "d.csv", _rows(4)))
  with pytest.raises(UserError, match="user_files_options.label_names"):
    user_files.user_files_options()


def test_bad_split_fractions_name_the_binding(tmp_path):
  _bind(train_path=_write_csv(tmp_path / "d.csv", _rows(10)), validation_fraction=0.6,
        test_fraction=0.5)
  assert "user_files_options" in _error(tmp_path)
