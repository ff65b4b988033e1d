"""Reads CSV, TSV and JSONL text files into rows, with one-line errors for bad files.

Rows are numbered from 1: for CSV/TSV row 1 is the first record after the header, for
JSONL row N is line N. TSV is read without quote processing (a `"` is text), unless asked:
one stray quote would otherwise swallow every line up to the next one. Parsed files are
kept in memory (keyed by path, size and mtime) so that the three splits of one task read a
file once; nothing is cached on disk. Paths may be local or gs:// (runtime/files.py).
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import re
import sys
from typing import Any

from gbair_jax.errors import UserError
from gbair_jax.runtime import files

FORMATS = ("csv", "tsv", "jsonl")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl",
               ".ndjson": "jsonl", ".json": "jsonl"}
# Bytes that are not UTF-8 decode (with surrogateescape) to lone surrogates U+DC80-U+DCFF.
_UNDECODABLE = re.compile("[\udc80-\udcff]")

# Review-sized fields exceed csv's 128 KiB default.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

# Data rows each file gave since the last `take_rows_read()`: what `gbair data describe`
# and `gbair run` print, so a file that parsed into fewer rows than it has lines shows.
_rows_read: dict[str, int] = {}


def take_rows_read() -> dict[str, int]:
  """{path: data rows} of the files read since the last call (and forgets them)."""
  rows = dict(_rows_read)
  _rows_read.clear()
  return rows


@dataclasses.dataclass(frozen=True)
class Table:
  """A parsed file: `rows` holds (row number, {column: value}); values are str for CSV."""

  path: str
  columns: tuple[str, ...]
  rows: tuple[tuple[int, dict[str, Any]], ...]

  def require_columns(self, *names: str, binding: str | None = None) -> None:
    """Raises `UserError` for the first of `names` the header lacks."""
    for name in names:
      if name not in self.columns:
        via = f" (set by {binding})" if binding else ""
        raise UserError(f"{self.path}: no column {name!r}{via}; "
                        f"the file has columns {list(self.columns)}")


def infer_format(path: str, file_format: str | None = None, binding: str | None = None) -> str:
  """The file format: `file_format` if given, else from the extension."""
  if file_format is not None:
    if file_format not in FORMATS:
      raise UserError(f"{binding or 'file_format'} = {file_format!r}: expected one of {FORMATS}")
    return file_format
  extension = os.path.splitext(path)[1].lower()
  if extension not in _EXTENSIONS:
    raise UserError(f"{path}: cannot tell the format from the extension {extension!r}; "
                    f"name it .csv, .tsv or .jsonl or set {binding or 'file_format'}")
  return _EXTENSIONS[extension]


def check_file(path: str, binding: str | None = None) -> str:
  """Returns `path` if it is a readable file, else raises `UserError` naming the binding."""
  via = f" (set by {binding})" if binding else ""
  if not files.exists(path):
    raise UserError(f"{path}: file not found{via}")
  if not files.isfile(path):
    raise UserError(f"{path}: not a file{via}")
  return path


def read_text(path: str, binding: str | None = None) -> str:
  """The file decoded as UTF-8 (a leading BOM dropped), or `UserError` at the first bad byte."""
  check_file(path, binding)
  data = files.read_bytes(path)
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise UserError(f"{path}, line {line}: bytes that are not UTF-8 "
                    f"(byte offset {e.start}: {data[e.start:e.start + 4]!r})") from None
  return text[1:] if text.startswith("\ufeff") else text


def read_table(path: str, file_format: str | None = None, binding: str | None = None,
               tsv_quotes: bool = False, encoding: str = "utf-8") -> Table:
  """Parses a CSV, TSV or JSONL file (see the module docstring for row numbering).

  `tsv_quotes=True` reads TSV with CSV-style quoting; a quoted field may then not hold
  a newline or a tab (the sign of an unclosed quote), which is refused. `encoding` other
  than UTF-8 is for packaged files known to be in another one (CSV/TSV only).
  """
  check_file(path, binding)
  file_format = infer_format(path, file_format)
  size, mtime_ns = files.stat_key(path)
  key = os.path.abspath(path) if files.is_local(path) else path
  if encoding != "utf-8" and file_format == "jsonl":
    raise UserError(f"{path}: JSONL files are read as UTF-8 only (got encoding {encoding!r})")
  table = _read_table_cached(key, path, file_format, bool(tsv_quotes), encoding, size, mtime_ns)
  _rows_read[path] = len(table.rows)
  return table


@functools.lru_cache(maxsize=16)
def _read_table_cached(abs_path: str, path: str, file_format: str, tsv_quotes: bool,
                       encoding: str, size: int, mtime_ns: int) -> Table:
  del abs_path, size, mtime_ns  # cache key only: a changed file is read again
  if file_format == "jsonl":
    return _read_jsonl(path)
  if file_format == "tsv":
    return _read_delimited(path, "\t", quotes=tsv_quotes, encoding=encoding)
  return _read_delimited(path, ",", quotes=True, encoding=encoding)


def _read_delimited(path: str, delimiter: str, quotes: bool, encoding: str = "utf-8") -> Table:
  data = files.read_bytes(path)
  check_bytes = False
  if encoding != "utf-8":
    try:
      text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as e:
      raise UserError(f"{path}: cannot decode as {encoding!r} ({e})") from None
  else:
    # surrogateescape keeps parsing past bad bytes so the error can name row and column.
    try:
      text = data.decode("utf-8")
    except UnicodeDecodeError:
      text = data.decode("utf-8", errors="surrogateescape")
      check_bytes = True
  if text.startswith("\ufeff"):
    text = text[1:]
  # Split on "\n" only (str.splitlines also splits on U+2028 and friends, which may sit
  # in unquoted text); csv joins the lines of quoted multi-line fields. 4x faster than
  # iterating an io.StringIO.
  quoting = {} if quotes else {"quoting": csv.QUOTE_NONE}
  reader = csv.reader((line + "\n" for line in text.split("\n")), delimiter=delimiter,
                      **quoting)
  try:
    header = next(reader)
  except StopIteration:
    raise UserError(f"{path}: the file is empty (expected a header row)") from None
  except csv.Error as e:
    raise UserError(f"{path}, header: {e}") from None
  header = tuple(name.strip() for name in header)
  rows = []
  row_number = 0
  try:
    for fields in reader:
      if not fields:
        continue  # blank line between records
      row_number += 1
      if len(fields) > len(header):
        raise UserError(f"{path}, row {row_number}: {len(fields)} fields but the header has "
                        f"{len(header)}")
      values = dict(zip(header, fields))
      if quotes and delimiter == "\t":
        for column, value in values.items():
          if "\n" in value or "\t" in value:
            raise UserError(f"{path}, row {row_number}, column {column!r}: a quoted field "
                            "holds a newline or a tab (an unclosed quote?); read TSV "
                            "without quotes (the default) or close the quote")
      if check_bytes:
        for column, value in values.items():
          if _UNDECODABLE.search(value):
            raise UserError(f"{path}, row {row_number}, column {column!r}: bytes that are "
                            "not UTF-8")
      rows.append((row_number, values))
  except csv.Error as e:
    raise UserError(f"{path}, row {row_number + 1}: {e}") from None
  if check_bytes:
    for name in header:
      if _UNDECODABLE.search(name):
        raise UserError(f"{path}, header: bytes that are not UTF-8")
  return Table(path=path, columns=header, rows=tuple(rows))


def _read_jsonl(path: str) -> Table:
  lines = files.read_bytes(path).split(b"\n")
  rows = []
  columns: dict[str, None] = {}  # ordered set of every key seen
  for line_number, raw in enumerate(lines, start=1):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise UserError(f"{path}, row {line_number}: bytes that are not UTF-8 "
                      f"(column {e.start + 1} of the line)") from None
    if line_number == 1 and line.startswith("\ufeff"):
      line = line[1:]
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"{path}, row {line_number}: not valid JSON ({e.msg} at column "
                      f"{e.colno})") from None
    if not isinstance(record, dict):
      raise UserError(f"{path}, row {line_number}: expected a JSON object, got "
                      f"{type(record).__name__}")
    columns.update(dict.fromkeys(record))
    rows.append((line_number, record))
  return Table(path=path, columns=tuple(columns), rows=tuple(rows))


def as_text(value: Any) -> str | None:
  """A cell as a string: JSON numbers and booleans as JSON writes them; None stays None."""
  if value is None or isinstance(value, str):
    return value
  return json.dumps(value)
