"""Readers for the paper's safety sets, from the files ParlAI downloads (no network here).

Build-it Break-it Fix-it single-turn (Dinan et al. 2019): ParlAI's `single_turn_safety.json`,
  {"standard"|"adversarial": {"train"|"valid"|"test": {"1"|"2"|"3": {"good"|"bad":
  [{"text": ..., "labels": ["__ok__"|"__notok__"], ...}]}}}}.
Bot-Adversarial Dialogue (Xu et al. 2020): `bot_adversarial_dialogue_datasets_with_persona/
  {train,valid,test}.txt` in ParlAI text format, one example per line, tab-separated
  `key:value` fields (`text:...\tlabels:__ok__\t...`); "\\n" in a value is a newline.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Sequence

import gin

from gbair_jax.data import columns as columns_lib
from gbair_jax.data import example_ids as ids_lib
from gbair_jax.data import table_files
from gbair_jax.errors import UserError
from gbair_jax.runtime import files

OK_CLASS = "__ok__"
NOT_OK_CLASS = "__notok__"
SINGLE_TURN_FILE = "single_turn_safety.json"
BAD_SUBDIR = "bot_adversarial_dialogue_datasets_with_persona"
# ParlAI's datatype names for our splits.
PARLAI_SPLITS = {"train": "train", "validation": "valid", "test": "test"}


def _require_dir(data_dir: str | None, binding: str, macro: str) -> str:
  if not data_dir:
    raise UserError(f"{binding} is not set: pass --gin.{macro}=\"'/path/to/folder'\"")
  if not files.isdir(data_dir):
    raise UserError(f"{data_dir}: folder not found (set by {binding})")
  return data_dir


def _label_names(names: Sequence[str], binding: str) -> tuple[str, ...]:
  names = tuple(names)
  if len(names) != 2 or len(set(names)) != 2 or not all(isinstance(n, str) and n.strip()
                                                         for n in names):
    raise UserError(f"{binding} = {names!r}: expected two different non-empty strings "
                    f"(for {OK_CLASS} and {NOT_OK_CLASS})")
  return names


def _label_id(value: Any, where: str) -> int:
  label = value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value
  if label == OK_CLASS:
    return 0
  if label == NOT_OK_CLASS:
    return 1
  raise UserError(f"{where}: label {value!r} is not one of [{OK_CLASS!r}, {NOT_OK_CLASS!r}]")


@gin.configurable
def bbf_options(data_dir: str | None = None, rounds: Sequence[int] = (1, 2, 3),
                label_names: Sequence[str] = ("ok", "not ok")) -> dict[str, Any]:
  """Gin-facing options of the Build-it Break-it Fix-it tasks.

  Args:
    data_dir: folder holding single_turn_safety.json (ParlAI: `data/dialogue_safety`).
    rounds: which collection rounds to use (ParlAI's default `--round 3` uses 1, 2, 3).
    label_names: verbalizers for __ok__ and __notok__ (label ids 0 and 1).
  """
  rounds = tuple(rounds)
  if not rounds or any(r not in (1, 2, 3) for r in rounds):
    raise UserError(f"bbf_options.rounds = {rounds!r}: expected rounds among 1, 2, 3")
  return {"data_dir": data_dir, "rounds": rounds,
          "label_names": _label_names(label_names, "bbf_options.label_names")}


@gin.configurable
def bad_options(data_dir: str | None = None, num_turns: int = -1,
                speaker_to_eval: str = "all",
                label_names: Sequence[str] = ("ok", "not ok")) -> dict[str, Any]:
  """Gin-facing options of the Bot-Adversarial Dialogue task.

  Args:
    data_dir: folder holding train.txt, valid.txt, test.txt, or their ParlAI parent
      folder (`data/bot_adversarial_dialogue/dialogue_datasets`).
    num_turns: keep only the last `num_turns` dialogue turns of each text (-1: all).
    speaker_to_eval: "all", "bot" or "human": whose labeled utterances to keep.
    label_names: verbalizers for __ok__ and __notok__ (label ids 0 and 1).
  """
  if speaker_to_eval not in ("all", "bot", "human"):
    raise UserError(f"bad_options.speaker_to_eval = {speaker_to_eval!r}: expected 'all', "
                    "'bot' or 'human'")
  if not isinstance(num_turns, int) or num_turns == 0 or num_turns < -1:
    raise UserError(f"bad_options.num_turns = {num_turns!r}: expected -1 (all) or a "
                    "positive number")
  return {"data_dir": data_dir, "num_turns": num_turns, "speaker_to_eval": speaker_to_eval,
          "label_names": _label_names(label_names, "bad_options.label_names")}


def bbf_label_names() -> tuple[str, ...]:
  """The verbalizers bound to `bbf_options.label_names`."""
  return bbf_options()["label_names"]


def bad_label_names() -> tuple[str, ...]:
  """The verbalizers bound to `bad_options.label_names`."""
  return bad_options()["label_names"]


@functools.lru_cache(maxsize=4)
def _load_json(path: str, size: int, mtime_ns: int) -> Any:
  del size, mtime_ns  # cache key only
  text = table_files.read_text(path)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise UserError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None


def _child(node: Any, key: str, path: str, where: str) -> Any:
  if not isinstance(node, dict) or key not in node:
    entry = f"{where}/{key}" if where else key
    raise UserError(f"{path}: no entry {entry!r}; is this ParlAI's {SINGLE_TURN_FILE}?")
  return node[key]


def bbf_split(kind: str, split: str) -> columns_lib.Columns:
  """One split of BBF single-turn `kind` ("standard" or "adversarial"), as columns."""
  options = bbf_options()
  data_dir = _require_dir(options["data_dir"], "bbf_options.data_dir", "BBF_DIR")
  path = table_files.check_file(files.join(data_dir, SINGLE_TURN_FILE), "bbf_options.data_dir")
  dump = _load_json(path, *files.stat_key(path))
  parlai_split = PARLAI_SPLITS[split]
  node = _child(_child(dump, kind, path, ""), parlai_split, path, kind)
  example_ids, texts, labels = [], [], []
  for round_number in options["rounds"]:
    round_node = _child(node, str(round_number), path, f"{kind}/{parlai_split}")
    for bucket in ("good", "bad"):
      messages = _child(round_node, bucket, path, f"{kind}/{parlai_split}/{round_number}")
      for index, message in enumerate(messages):
        where = f"{path}, row {kind}/{parlai_split}/{round_number}/{bucket}[{index}]"
        if not isinstance(message, dict):
          raise UserError(f"{where}: expected a message object")
        labels.append(_label_id(message.get("labels"), f"{where}, column 'labels'"))
        text = message.get("text")
        if not isinstance(text, str) or not text.strip():
          raise UserError(f"{where}, column 'text': empty text")
        texts.append(text)
        example_ids.append(ids_lib.stable_example_id(
            "bbf", SINGLE_TURN_FILE, kind, parlai_split, round_number, bucket, index))
  return columns_lib.make_columns(example_ids, texts, labels)


def _unescape_parlai(value: str) -> str:
  # As ParlAI's str_to_msg: escaped tab and newline, and "|" written as __PIPE__.
  return value.replace("\\t", "\t").replace("\\n", "\n").replace("__PIPE__", "|")


def parse_parlai_line(line: str) -> dict[str, str]:
  """ParlAI text format: tab-separated `key:value` fields (key up to the first colon)."""
  message = {}
  for field in line.split("\t"):
    if not field:
      continue
    key, sep, value = field.partition(":")
    if sep:
      message[key] = value
  return message


def _bad_file(data_dir: str, parlai_split: str) -> str:
  direct = files.join(data_dir, f"{parlai_split}.txt")
  nested = files.join(data_dir, BAD_SUBDIR, f"{parlai_split}.txt")
  if not files.exists(direct) and files.exists(nested):
    return nested
  return table_files.check_file(direct, "bad_options.data_dir")


def bad_split(split: str) -> columns_lib.Columns:
  """One split of Bot-Adversarial Dialogue, as columns; each line is one example."""
  options = bad_options()
  data_dir = _require_dir(options["data_dir"], "bad_options.data_dir", "BAD_DIR")
  parlai_split = PARLAI_SPLITS[split]
  path = _bad_file(data_dir, parlai_split)
  file_name = os.path.basename(path)
  example_ids, texts, labels = [], [], []
  for line_number, line in enumerate(table_files.read_text(path).split("\n"), start=1):
    line = line.rstrip("\r")
    if not line.strip():
      continue
    message = parse_parlai_line(line)
    where = f"{path}, row {line_number}"
    speaker = message.get("speaker_to_eval", "")
    if options["speaker_to_eval"] != "all" and speaker != options["speaker_to_eval"]:
      continue
    if "labels" not in message:
      raise UserError(f"{where}: no column 'labels' (expected labels:{OK_CLASS} or "
                      f"labels:{NOT_OK_CLASS})")
    labels.append(_label_id(message["labels"].split("|"), f"{where}, column 'labels'"))
    text = _unescape_parlai(message.get("text", ""))
    if options["num_turns"] > 0:
      text = "\n".join(text.split("\n")[-options["num_turns"]:])
    if not text.strip():
      raise UserError(f"{where}, column 'text': empty text")
    texts.append(text)
    example_ids.append(ids_lib.stable_example_id("bad", file_name, line_number))
  return columns_lib.make_columns(example_ids, texts, labels)
