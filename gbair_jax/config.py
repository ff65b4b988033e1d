"""Gin set-up shared by every `gbair` command, T5X style.

`--gin_file` (repeatable), `--gin_search_paths`, and `--gin.KEY=VALUE` overrides, which are
rewritten to gin bindings. Errors name the file or binding at fault.
"""
from __future__ import annotations

import os
from typing import Sequence

import gin

from gbair_jax.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def split_gin_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--gin.KEY=VALUE` (and `--gin.KEY VALUE`) from the other arguments."""
  rest, bindings = [], []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    if arg.startswith("--gin."):
      key, sep, value = arg[len("--gin."):].partition("=")
      if not sep:
        if i + 1 >= len(args):
          raise UserError(f"--gin.{key} needs a value: --gin.{key}=VALUE")
        value = args[i + 1]
        i += 1
      bindings.append(f"{key} = {value}")
    else:
      rest.append(arg)
    i += 1
  return rest, bindings


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str] = (),
              search_paths: Sequence[str] = ()) -> None:
  """Parses gin files then bindings; unknown files/bindings raise UserError."""
  import_configurables()
  gin.clear_config()
  for path in [*search_paths, os.getcwd(), REPO_ROOT]:
    gin.add_config_file_search_path(path)
  for gin_file in gin_files:
    try:
      gin.parse_config_file(gin_file)
    except IOError as e:
      raise UserError(f"gin file {gin_file}: not found (search paths: {', '.join(search_paths) or 'none'}, "
                      f"., {REPO_ROOT})") from e
    except Exception as e:  # gin reports bad lines with ValueError, KeyError, SyntaxError...
      raise UserError(f"gin file {gin_file}: {one_line(e)}") from e
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except Exception as e:
      raise UserError(f"gin binding '{binding}': {one_line(e)}") from e
  try:
    gin.finalize()
  except Exception as e:
    raise UserError(f"gin config: {one_line(e)}") from e


def one_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0] if text else type(error).__name__


def import_configurables() -> None:
  """Imports every module that registers gin configurables, so any gin file can use them."""
  # pylint: disable=g-import-not-at-top,unused-import
  import tasks  # noqa: F401  (SeqIO task registrations)
  from gbair_jax.data import dataset  # noqa: F401
  from gbair_jax.models import bert, classifier, llama, prompt, t5  # noqa: F401
  from gbair_jax.recovery import loop  # noqa: F401
  from gbair_jax.runtime import mesh  # noqa: F401  (partitioning.make_mesh)
  from gbair_jax.train import experiment, optimizer, trainer  # noqa: F401
