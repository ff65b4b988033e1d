"""`describe` / `format_description`, and `gbair data describe` end to end on insults."""
import json
import os

import gin
import numpy as np
import pytest

from gbair_jax.data import describe
from gbair_jax.data.dataset import LabeledData

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _split(labels, corrupted=()):
  n = len(labels)
  is_corrupted = np.zeros(n, bool)
  is_corrupted[list(corrupted)] = True
  labels = np.array(labels, np.int32)
  return {"example_id": np.arange(100, 100 + n, dtype=np.int64),
          "text": np.array([f"text\n{i}" for i in range(n)], object),
          "label": labels, "original_label": np.where(is_corrupted, 1 - labels, labels),
          "is_corrupted": is_corrupted}


def _data():
  return LabeledData(task="toy", label_names=("no", "yes"),
                     splits={"train": _split([0, 1, 1, 0, 1], corrupted=[0, 3]),
                             "validation": _split([1, 0]), "test": _split([])})


def test_describe_dict():
  d = describe.describe(_data())
  assert list(d) == ["task", "rows_read", "splits"] and d["task"] == "toy"
  train = d["splits"]["train"]
  assert set(train) == {"num_examples", "label_counts", "num_corrupted", "flips", "samples"}
  assert train["flips"] == {"yes -> no": 2}  # rows 0 and 3: clean "yes", now "no"
  assert train["num_examples"] == 5
  assert train["label_counts"] == {"no": 2, "yes": 3}
  assert train["num_corrupted"] == 2
  assert train["samples"][0] == {"example_id": 100, "text": "text\n0", "label": "no",
                                 "original_label": "yes", "is_corrupted": True}
  assert len(train["samples"]) == 3
  assert d["splits"]["validation"]["samples"][1]["label"] == "no"
  assert d["splits"]["test"] == {"num_examples": 0, "label_counts": {"no": 0, "yes": 0},
                                 "num_corrupted": 0, "flips": {}, "samples": []}
  json.dumps(d)  # JSON-ready: plain ints, strs and bools


def test_format_description_table():
  text = describe.format_description(describe.describe(_data()))
  lines = text.splitlines()
  assert lines[0] == "task: toy"
  assert lines[1].split() == ["split", "examples", "no", "yes", "corrupted"]
  assert lines[3].split() == ["train", "5", "2", "3", "2"]
  assert lines[5].split() == ["test", "0", "0", "0", "0"]
  assert "  [100] no (was yes): text 0" in lines


def _main():
  from gbair_jax import main  # pylint: disable=g-import-not-at-top
  return main


def test_cli_describe_json_insults(capsys):
  main = _main()
  status = main.main(["data", "describe",
                      f"--gin_file={os.path.join(REPO, 'gin', 'data', 'insults.gin')}",
                      "--gin.CORRUPTION_RATE=0.3", "--json"])
  assert status == 0
  out = capsys.readouterr().out.strip().splitlines()
  assert len(out) == 1
  d = json.loads(out[0])
  splits = d["splits"]
  assert d["task"] == "insults"
  assert splits["train"]["num_examples"] + splits["validation"]["num_examples"] == 3947
  assert splits["test"]["num_examples"] == 2647
  assert splits["train"]["num_corrupted"] == round(0.3 * splits["train"]["num_examples"])
  assert splits["validation"]["num_corrupted"] == splits["test"]["num_corrupted"] == 0


def test_cli_bad_rate_exits_2_naming_the_binding(capsys, monkeypatch, tmp_path):
  main = _main()
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr("sys.argv", [
      "gbair", "data", "describe",
      f"--gin_file={os.path.join(REPO, 'gin', 'data', 'insults.gin')}",
      "--gin.CORRUPTION_RATE=1.5"])
  with pytest.raises(SystemExit) as info:
    main.run()
  assert info.value.code == 2
  first_line = capsys.readouterr().err.strip().splitlines()[0]
  assert "corrupt_labels.rate" in first_line and "1.5" in first_line
  assert os.listdir(tmp_path) == []  # nothing written
