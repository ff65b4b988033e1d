"""The paper's safety sets from small fixture files in ParlAI's published formats.

BBF single-turn: single_turn_safety.json; BAD: {train,valid,test}.txt in ParlAI text format.
"""
import json
import os

import gin
import numpy as np
import pytest

from gbair_jax.data import dataset
from gbair_jax.data import parlai
from gbair_jax.errors import UserError
import tasks  # noqa: F401  (registers before a gin file locks the config)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _message(text, label):
  return {"text": text, "labels": [label], "episode_done": True}


def _bbf_dump():
  dump = {}
  for kind in ("standard", "adversarial"):
    dump[kind] = {}
    for split, size in (("train", 4), ("valid", 2), ("test", 1)):
      dump[kind][split] = {
          str(r): {"good": [_message(f"{kind} {split} r{r} good {i}", "__ok__")
                            for i in range(size)],
                   "bad": [_message(f"{kind} {split} r{r} bad {i}", "__notok__")
                           for i in range(size // 2 or 1)]}
          for r in (1, 2, 3)}
  return dump


@pytest.fixture
def bbf_dir(tmp_path):
  (tmp_path / parlai.SINGLE_TURN_FILE).write_text(json.dumps(_bbf_dump()), encoding="utf-8")
  return str(tmp_path)


def _bad_line(text, label, speaker="human"):
  escaped = text.replace("\n", "\\n")
  return (f"text:{escaped}\tlabels:{label}\tid:bot_adversarial_dialogue\t"
          f"speaker_to_eval:{speaker}\tbot_persona:your persona: I like tea.\t"
          "episode_done:True")


@pytest.fixture
def bad_dir(tmp_path):
  folder = tmp_path / "dialogue_datasets" / parlai.BAD_SUBDIR
  folder.mkdir(parents=True)
  for split, size in (("train", 6), ("valid", 3), ("test", 2)):
    lines = [_bad_line(f"hi there\nhow are you {i}|fine",
                       "__notok__" if i % 3 == 0 else "__ok__",
                       "bot" if i % 2 else "human") for i in range(size)]
    (folder / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(tmp_path / "dialogue_datasets")


def test_bbf_standard_and_adversarial(bbf_dir):
  gin.parse_config_files_and_bindings(
      [os.path.join(REPO, "gin", "data", "parlai_bbf.gin")], [f"BBF_DIR = '{bbf_dir}'"],
      finalize_config=False)
  data = dataset.load_data()
  assert data.task == "bbf_standard" and data.label_names == ("ok", "not ok")
  sizes = {name: len(split["label"]) for name, split in data.splits.items()}
  # Three rounds of (good + bad) per split.
  assert sizes == {"train": 3 * (4 + 2), "validation": 3 * (2 + 1), "test": 3 * (1 + 1)}
  train = data.splits["train"]
  assert train["text"][0] == "standard train r1 good 0"
  assert train["label"].tolist() == ([0] * 4 + [1] * 2) * 3
  gin.bind_parameter("load_data.task", "bbf_adversarial")
  gin.bind_parameter("bbf_options.rounds", (2,))
  adversarial = dataset.load_data()
  assert adversarial.splits["test"]["text"].tolist() == ["adversarial test r2 good 0",
                                                        "adversarial test r2 bad 0"]
  assert not set(adversarial.splits["train"]["example_id"]) & set(train["example_id"])


def test_bad_text_format(bad_dir):
  gin.parse_config_files_and_bindings(
      [os.path.join(REPO, "gin", "data", "bad.gin")], [f"BAD_DIR = '{bad_dir}'"],
      finalize_config=False)
  data = dataset.load_data()
  assert data.task == "bot_adversarial_dialogue"
  sizes = {name: len(split["label"]) for name, split in data.splits.items()}
  assert sizes == {"train": 6, "validation": 3, "test": 2}
  train = data.splits["train"]
  assert train["text"][1] == "hi there\nhow are you 1|fine"
  assert train["label"].tolist() == [1, 0, 0, 1, 0, 0]
  gin.bind_parameter("bad_options.speaker_to_eval", "bot")
  gin.bind_parameter("bad_options.num_turns", 1)
  bots = dataset.load_data().splits["train"]
  assert bots["text"].tolist() == [f"how are you {i}|fine" for i in (1, 3, 5)]
  np.testing.assert_array_equal(bots["example_id"], train["example_id"][[1, 3, 5]])


def test_parse_parlai_line():
  message = parlai.parse_parlai_line("text:a: b\\nc\tlabels:__ok__\tepisode_done:True")
  assert message == {"text": "a: b\\nc", "labels": "__ok__", "episode_done": "True"}


def _first_line(error):
  return str(error.value).splitlines()[0]


def test_missing_data_dir_names_the_binding(tmp_path):
  gin.bind_parameter("load_data.task", "bbf_standard")
  with pytest.raises(UserError) as info:
    dataset.load_data()
  assert "bbf_options.data_dir" in _first_line(info) and "BBF_DIR" in _first_line(info)
  gin.bind_parameter("bbf_options.data_dir", str(tmp_path))
  with pytest.raises(UserError) as info:
    dataset.load_data()
  assert parlai.SINGLE_TURN_FILE in _first_line(info) and "not found" in _first_line(info)


def test_bbf_bad_label_and_empty_text(tmp_path):
  dump = _bbf_dump()
  dump["standard"]["train"]["2"]["bad"][1]["labels"] = ["__maybe__"]
  (tmp_path / parlai.SINGLE_TURN_FILE).write_text(json.dumps(dump), encoding="utf-8")
  gin.bind_parameter("bbf_options.data_dir", str(tmp_path))
  with pytest.raises(UserError) as info:
    dataset.load_data("bbf_standard")
  assert "row standard/train/2/bad[1], column 'labels'" in _first_line(info)
  dump["standard"]["train"]["2"]["bad"][1] = _message(" ", "__ok__")
  (tmp_path / parlai.SINGLE_TURN_FILE).write_text(json.dumps(dump), encoding="utf-8")
  with pytest.raises(UserError) as info:
    dataset.load_data("bbf_standard")
  assert "column 'text': empty text" in _first_line(info)


def test_bad_file_errors(bad_dir):
  train = os.path.join(bad_dir, parlai.BAD_SUBDIR, "train.txt")
  lines = open(train, encoding="utf-8").read().splitlines()
  gin.bind_parameter("bad_options.data_dir", bad_dir)
  with open(train, "w", encoding="utf-8") as f:
    f.write("\n".join(lines[:2] + [lines[2].replace("labels:__ok__", "labels:__bad__")]))
  with pytest.raises(UserError) as info:
    dataset.load_data("bot_adversarial_dialogue")
  assert "train.txt, row 3, column 'labels'" in _first_line(info)
  with open(train, "wb") as f:
    f.write(lines[0].encode() + b"\n" + b"text:\xff\xfe\tlabels:__ok__\n")
  with pytest.raises(UserError) as info:
    dataset.load_data("bot_adversarial_dialogue")
  assert "train.txt, line 2" in _first_line(info) and "not UTF-8" in _first_line(info)
