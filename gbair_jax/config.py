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
# Where `gin/...` names resolve when no search path holds them: the copy of gin/ that an
# installed package ships (setup.py), else the repository's own (a source checkout).
_PACKAGED_GIN_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gin_files")
GIN_ROOT = _PACKAGED_GIN_ROOT if os.path.isdir(_PACKAGED_GIN_ROOT) else REPO_ROOT


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


_uri_reader_registered = False


def _register_uri_reader() -> None:
  """Lets gin read gin files (and a run's config.gin) from gs:// and other URIs."""
  global _uri_reader_registered
  if not _uri_reader_registered:
    from gbair_jax.runtime import files  # pylint: disable=g-import-not-at-top
    import io  # pylint: disable=g-import-not-at-top
    gin.config.register_file_reader(
        lambda path: io.StringIO(files.read_text(path)),
        lambda path: not files.is_local(path) and files.isfile(path))
    _uri_reader_registered = True


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str] = (),
              search_paths: Sequence[str] = ()) -> None:
  """Parses gin files then bindings; unknown files/bindings raise UserError.

  Beyond the core every command builds on (`import_core`), gin files import the modules
  whose configurables they bind (T5X style): a command loads only the stages and the
  backbone its config names.
  """
  import_core()
  _register_uri_reader()
  gin.clear_config()
  for path in [*search_paths, os.getcwd(), GIN_ROOT]:
    gin.add_config_file_search_path(path)
  for gin_file in gin_files:
    try:
      gin.parse_config_file(gin_file)
    except IOError as e:
      raise UserError(f"gin file {gin_file}: not found (search paths: {', '.join(search_paths) or 'none'}, "
                      f"., {GIN_ROOT})") from e
    except Exception as e:  # gin reports bad lines with ValueError, KeyError, SyntaxError...
      raise UserError(f"gin file {gin_file}: {one_line(e)}") from e
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except Exception as e:
      hint = ("; bind it after a gin file that imports its module (e.g. --gin_file="
              "gin/runs/base.gin), or add that import to your gin file"
              if "No configurable matching" in str(e) else "")
      raise UserError(f"gin binding '{binding}': {one_line(e)}{hint}") from e
  try:
    gin.finalize()
  except Exception as e:
    raise UserError(f"gin config: {one_line(e)}") from e
  check_macros_used()


# Which runs a benchmark holds, not how any of them trains: a rerun may list more strategies
# or seeds (the finished runs resume, the new ones start), so a recorded config is matched
# without them (`same_recorded_config`), and config.gin files record none (`recorded_config`).
RUN_LIST_BINDINGS = ("benchmark.strategies", "benchmark.seeds")
# The lists as directories made before 2026-12-07 recorded them, after the gin config.
RUN_LIST_COMMENTS = ("# strategies:", "# seeds:")


def without_run_lists(config_text: str) -> str:
  """`config_text` (gin.config_str() format) without RUN_LIST_BINDINGS and RUN_LIST_COMMENTS.

  A binding gin wraps continues on indented lines; those go with it.
  """
  starts = tuple(f"{name} = " for name in RUN_LIST_BINDINGS)
  kept, in_left_out_binding = [], False
  for line in config_text.splitlines(keepends=True):
    if in_left_out_binding and line[:1] in (" ", "\t"):
      continue
    in_left_out_binding = line.startswith(starts)
    if not in_left_out_binding and not line.startswith(RUN_LIST_COMMENTS):
      kept.append(line)
  return "".join(kept)


def same_recorded_config(recorded: str, config: str) -> bool:
  """Whether a rerun's config matches the one recorded: the same lines, apart from blank
  ones and those `without_run_lists` leaves out."""
  lines = lambda text: [line for line in without_run_lists(text).splitlines() if line.strip()]
  return lines(recorded) == lines(config)


def recorded_config() -> str:
  """The gin config as a run records it in its config.gin: without RUN_LIST_BINDINGS."""
  return without_run_lists(gin.config_str())


def check_macros_used() -> None:
  """Refuses a macro that is bound but never referenced (`--gin.CORRUPTION_RATEE=0` would
  otherwise run with the default), suggesting the closest macro that is used."""
  import difflib  # pylint: disable=g-import-not-at-top
  bindings = gin.config._CONFIG  # pylint: disable=protected-access  (gin has no public view)
  macro = gin.config.get_configurable(gin.config.macro)
  bound = {scope for scope, selector in bindings if selector == "gin.macro"}
  used = {ref.scoped_selector.rsplit("/", 1)[0]
          for ref in gin.config.iterate_references(bindings, to=macro)}
  unused = sorted(bound - used)
  if unused:
    close = difflib.get_close_matches(unused[0], sorted(used), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise UserError(f"gin macro {unused[0]} is bound but nothing uses it{hint}")


def one_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0] if text else type(error).__name__


def import_core() -> None:
  """Imports the configurables every command uses (data loading, classifier, trainer,
  mesh): gin locks its registry when a config is finalised, so a configurable module first
  imported later would fail. Backbones, strategies and the round loop are not core: the
  gin files that bind them import them."""
  # pylint: disable=g-import-not-at-top,unused-import
  from gbair_jax.train import experiment, trainer  # noqa: F401


# Stages a command that only rebuilds a run's experiment (`gbair influence`) neither imports
# nor binds when it reads the run's config.gin.
RUN_ONLY_MODULES = ("gbair_jax.recovery", "gbair_jax.review")


def parse_run_config(path: str, leave_out: Sequence[str] = RUN_ONLY_MODULES) -> None:
  """Parses a run's recorded config.gin for a command that rebuilds only its experiment.

  The import lines of `leave_out` are dropped and their bindings skipped, so `gbair
  influence` loads the data, the run's backbone and the trainer, not the round loop.
  The file was checked when the run started; it is read as recorded.
  """
  import_core()
  _register_uri_reader()
  from gbair_jax.runtime import files  # pylint: disable=g-import-not-at-top
  kept = [line for line in files.read_text(path).splitlines()
          if not any(line.startswith(f"import {module}") for module in leave_out)]
  gin.clear_config()
  try:
    gin.parse_config("\n".join(kept), skip_unknown=True)
    gin.finalize()
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"{path}: {one_line(e)}") from e
