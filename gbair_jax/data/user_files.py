"""Bring-your-own data: CSV, TSV or JSONL files with a text column and a label column.

Everything comes from gin (`user_files_options.*`): the files, the column names, the label
names (verbalizers) and, for splits without a file of their own, a seeded stratified
split carved out of the training file.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import gin
import numpy as np

from gbair_jax.data import columns as columns_lib
from gbair_jax.data import example_ids as ids_lib
from gbair_jax.data import splits as splits_lib
from gbair_jax.data import table_files
from gbair_jax.errors import UserError

_BINDING = "user_files_options"
_INTEGER = re.compile(r"[+-]?\d+")


@dataclasses.dataclass(frozen=True)
class UserFilesOptions:
  """The validated `user_files_options` bindings (see that function for the meaning)."""

  train_path: str
  validation_path: str | None
  test_path: str | None
  text_column: str
  label_column: str
  label_names: tuple[str, ...]
  label_values: tuple[str, ...]
  id_column: str | None
  file_format: str | None
  validation_fraction: float
  test_fraction: float
  split_seed: int
  tsv_quotes: bool = False


@gin.configurable
def user_files_options(train_path: str | None = None,
                       validation_path: str | None = None,
                       test_path: str | None = None,
                       text_column: str = "text",
                       label_column: str = "label",
                       label_names: Sequence[str] | None = None,
                       label_values: Sequence[str] | None = None,
                       id_column: str | None = None,
                       file_format: str | None = None,
                       validation_fraction: float = 0.1,
                       test_fraction: float = 0.1,
                       split_seed: int = 0,
                       tsv_quotes: bool = False) -> UserFilesOptions:
  """The user's data files and how to read them; every argument is a gin binding.

  Args:
    train_path: the training file (.csv, .tsv or .jsonl). Required.
    validation_path: validation file; if None, `validation_fraction` of each class of
      the training file becomes the validation split.
    test_path: test file; if None, `test_fraction` of each class of the training file.
    text_column: the column (JSONL: key) holding the text.
    label_column: the column holding the label.
    label_names: verbalizer per class, index = label id, e.g. ("negative", "positive").
    label_values: how each class is written in the label column, in the order of
      `label_names` (e.g. ("0", "1")); default: the label names themselves.
    id_column: optional column of unique example ids (integers, or strings hashed to
      ids); default: ids from the split and row number.
    file_format: "csv", "tsv" or "jsonl"; default: from each file's extension.
    validation_fraction: see `validation_path`.
    test_fraction: see `test_path`.
    split_seed: which training-file rows are carved out.
    tsv_quotes: read TSV files with CSV-style quotes; default False: in TSV a `"` is
      text (one unclosed quote would otherwise swallow the lines after it).
  """
  if not train_path:
    raise UserError(f"{_BINDING}.train_path is not set: pass "
                    "--gin.USER_TRAIN_FILE=\"'/path/to/train.csv'\"")
  if not label_names:
    raise UserError(f"{_BINDING}.label_names is not set: give one verbalizer per class, "
                    "e.g. --gin.USER_LABEL_NAMES=\"('negative', 'positive')\"")
  names = tuple(label_names)
  if isinstance(label_names, str) or len(names) < 2 or not all(
      isinstance(n, str) and n.strip() for n in names) or len(set(names)) != len(names):
    raise UserError(f"{_BINDING}.label_names = {label_names!r}: expected two or more "
                    "different non-empty strings")
  values = names if label_values is None else tuple(
      table_files.as_text(v) for v in label_values)
  if len(values) != len(names) or len(set(values)) != len(values):
    raise UserError(f"{_BINDING}.label_values = {label_values!r}: expected {len(names)} "
                    f"different values, one per label name {list(names)}")
  fractions = {}
  if not validation_path:
    fractions["validation_fraction"] = validation_fraction
  if not test_path:
    fractions["test_fraction"] = test_fraction
  splits_lib.check_fractions(fractions, _BINDING)
  return UserFilesOptions(
      train_path=train_path, validation_path=validation_path or None,
      test_path=test_path or None, text_column=text_column, label_column=label_column,
      label_names=names, label_values=values, id_column=id_column, file_format=file_format,
      validation_fraction=validation_fraction, test_fraction=test_fraction,
      split_seed=split_seed, tsv_quotes=bool(tsv_quotes))


def user_label_names() -> tuple[str, ...]:
  """The verbalizers bound to `user_files_options.label_names`."""
  return user_files_options().label_names


def _example_id(value: str | None, where: str) -> int:
  if value is None or not str(value).strip():
    raise UserError(f"{where}: empty example id")
  value = str(value).strip()
  if _INTEGER.fullmatch(value):
    number = int(value)
    if not -(1 << 63) <= number < (1 << 63):
      raise UserError(f"{where}: example id {value} does not fit in int64")
    return number
  return ids_lib.stable_example_id("user_files", "id", value)


def _read_file(path: str, role: str, options: UserFilesOptions,
               binding: str) -> tuple[columns_lib.Columns, list[str]]:
  """Columns of one file, and the "file, row, column" of each row for id messages."""
  table_files.check_file(path, binding)  # before the format: a missing file says so
  table = table_files.read_table(path, table_files.infer_format(
      path, options.file_format, f"{_BINDING}.file_format"), binding,
                                 tsv_quotes=options.tsv_quotes)
  table.require_columns(options.text_column, binding=f"{_BINDING}.text_column")
  table.require_columns(options.label_column, binding=f"{_BINDING}.label_column")
  if options.id_column:
    table.require_columns(options.id_column, binding=f"{_BINDING}.id_column")
  value_to_id = {value: index for index, value in enumerate(options.label_values)}
  example_ids, texts, labels, places = [], [], [], []
  for row, values in table.rows:
    where = f"{path}, row {row}, column"
    raw_label = table_files.as_text(values.get(options.label_column))
    label = value_to_id.get(raw_label.strip() if raw_label is not None else None)
    if label is None:
      raise UserError(f"{where} {options.label_column!r}: label {raw_label!r} is not one of "
                      f"{list(options.label_values)} (set by {_BINDING}.label_values or "
                      f"{_BINDING}.label_names)")
    text = values.get(options.text_column)
    if text is not None and not isinstance(text, str):
      raise UserError(f"{where} {options.text_column!r}: expected text, got "
                      f"{table_files.as_text(text)}")
    if text is None or not text.strip():
      raise UserError(f"{where} {options.text_column!r}: empty text")
    if options.id_column:
      id_where = f"{where} {options.id_column!r}"
      example_ids.append(_example_id(table_files.as_text(values.get(options.id_column)),
                                     id_where))
      places.append(id_where)
    else:
      example_ids.append(ids_lib.stable_example_id("user_files", role, row))
      places.append(f"{path}, row {row}")
    texts.append(text)
    labels.append(label)
  if not texts:
    raise UserError(f"{path}: no examples (set by {binding})")
  return columns_lib.make_columns(example_ids, texts, labels), places


def _rows_needed(fractions: dict[str, float]) -> int:
  """The fewest rows a class needs so that every carved split, and train, get one."""
  for rows in range(1, 100_000):
    counts = [int(round(fraction * rows)) for fraction in fractions.values()]
    if min(counts) >= 1 and rows - sum(counts) >= 1:
      return rows
  return 100_000


def _empty_carved_split(name: str, fractions: dict[str, float], labels: np.ndarray,
                        options: UserFilesOptions) -> str:
  counts = np.bincount(labels, minlength=len(options.label_names))
  per_class = ", ".join(f"{label} {count}" for label, count in zip(options.label_names, counts))
  setting = (f"{_BINDING}.{name}_fraction={fractions[name]}" if name in fractions
             else "the validation and test fractions")
  return (f"{options.train_path}: the carved {name} split is empty: with {setting} "
          f"each class needs at least {_rows_needed(fractions)} rows (this file has "
          f"{per_class}); add rows or give {_BINDING}.{name}_path")


def user_files_splits() -> dict[str, columns_lib.Columns]:
  """All three splits of the user's data as columns {example_id, text, label}."""
  options = user_files_options()
  paths = {"train": options.train_path, "validation": options.validation_path,
           "test": options.test_path}
  data, places = {}, {}
  for role, path in paths.items():
    if path:
      data[role], places[role] = _read_file(path, role, options, f"{_BINDING}.{role}_path")
  fractions = {}
  if "validation" not in data:
    fractions["validation"] = options.validation_fraction
  if "test" not in data:
    fractions["test"] = options.test_fraction
  if fractions:
    train = data["train"]
    rows = splits_lib.stratified_split(train["example_id"], train["label"], fractions,
                                       options.split_seed)
    for name, indices in rows.items():
      data[name] = columns_lib.take_rows(train, indices)
      places[name] = [places["train"][i] for i in indices]
    for name, indices in rows.items():
      # A fraction that rounds to no row is a surprise; a fraction of 0 asked for none
      # (load_data refuses the empty split then, with a message of its own).
      if indices.size == 0 and fractions.get(name, 1.0) > 0:
        raise UserError(_empty_carved_split(name, fractions, train["label"], options))
  all_places = [place for name in columns_lib.SPLITS for place in places[name]]
  ids_lib.check_unique_ids(
      np.concatenate([data[name]["example_id"] for name in columns_lib.SPLITS]),
      lambda index: all_places[index])
  return {name: data[name] for name in columns_lib.SPLITS}

