"""`gbair benchmark --gin_file=gin/benchmarks/<suite>.gin --output_dir=DIR [--seeds=...] [--quick]`.

Runs every strategy of a suite over its corruption seeds (recovery/benchmark.py) and writes
benchmark.json, benchmark.md and benchmark.png to DIR. `--seeds=100,101,...` replaces the
suite's `benchmark.seeds`; `--quick` adds gin/benchmarks/quick.gin after the suite's
files (a small, fast variant on development seeds: a smoke test, not results), before any
`--gin.KEY=VALUE` override.
"""
from __future__ import annotations

import shlex

from gbair_jax.errors import UserError


def parse_seeds(text: str | None) -> list[int] | None:
  if text is None:
    return None
  try:
    seeds = [int(s) for s in text.split(",") if s.strip()]
  except ValueError as e:
    raise UserError(f"--seeds={text!r}: expected comma-separated integers, e.g. 100,101,102") from e
  if not seeds:
    raise UserError(f"--seeds={text!r}: give at least one seed")
  return seeds


def gin_files(args) -> list[str]:
  """The suite's gin files, then quick.gin with --quick."""
  from gbair_jax.recovery.benchmark import QUICK_GIN  # pylint: disable=g-import-not-at-top
  if not args.gin_file:
    raise UserError("gbair benchmark needs --gin_file=gin/benchmarks/<suite>.gin")
  return [*args.gin_file, QUICK_GIN] if args.quick else list(args.gin_file)


def run(args, argv: list[str]) -> dict:
  """The command body; gin is already parsed (with `gin_files(args)`)."""
  from gbair_jax.recovery import benchmark  # pylint: disable=g-import-not-at-top
  seeds = parse_seeds(args.seeds)
  command = "gbair " + " ".join(shlex.quote(a) for a in argv)
  return benchmark.benchmark(args.output_dir, seeds_override=seeds, command=command)
