"""The `gbair` command: T5X-style gin flags over the stages of G-BAIR.

  gbair data describe --gin_file=gin/data/insults.gin [--gin.CORRUPTION_RATE=0.3] [--json]
  gbair train     --gin_file=gin/runs/train_insults.gin --output_dir=runs/insults
  gbair influence --output_dir=runs/quickstart --round=0 [--queries=misclassified] [--top_k=5]
  gbair run       --gin_file=gin/runs/quickstart.gin --output_dir=runs/quickstart [--review]
  gbair review    --output_dir=runs/quickstart [--round=R] [--port=8765] [--score]
  gbair compare   --gin_file=gin/runs/quickstart.gin --strategies=tracin_opponents,loss,random
  gbair benchmark --gin_file=gin/benchmarks/insults_uniform.gin --output_dir=runs/bench [--quick]
Bad input prints one line (`gbair: error: ...`) and exits 2.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Rounds, references and resumed runs compile the same programs again: keep compiled XLA
# programs on disk (set JAX_COMPILATION_CACHE_DIR to move it, or to "" to turn it off).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.expanduser("~"), ".cache", "gbair_jax", "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

from gbair_jax.errors import UserError  # noqa: E402

# TensorFlow's C++ start-up lines (absl's pre-init notice, oneDNN, CPU features, CUDA
# probing) ignore TF_CPP_MIN_LOG_LEVEL and would precede every `gbair: error:` line.
_TF_START_UP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IW]\d{4} |"
    r"E\d{4} .*(cuInit|cuda|CUDA)|To enable the following instructions:)")


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow with file descriptor 2 captured, then passes on every line of what
  it printed that is not start-up noise (so a real import problem still shows)."""
  if "tensorflow" in sys.modules:
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow as tf  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
      # The first device query probes CUDA (another line); TF feeds data, JAX computes.
      tf.config.set_visible_devices([], "GPU")
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      lines = captured.read().decode("utf-8", "replace").splitlines()
      kept = [line for line in lines if line.strip() and not _TF_START_UP_NOISE.match(line)]
      if kept:
        print("\n".join(kept), file=sys.stderr)


class _OneLineParser(argparse.ArgumentParser):
  """argparse, but a usage error is one `gbair: error:` line and exit 2, like bad input."""

  def error(self, message: str):
    raise UserError(f"{message} (see `{self.prog} --help`)")


def _parser() -> argparse.ArgumentParser:
  parser = _OneLineParser(prog="gbair", description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True,
                                   parser_class=_OneLineParser)

  def gin_flags(p, output_dir=True):
    p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
    p.add_argument("--gin_search_paths", default="", help="comma-separated dirs for gin includes")
    p.add_argument("--gin_bindings", action="append", default=[], help="one gin binding (repeatable)")
    if output_dir:
      p.add_argument("--output_dir", required=True)
    p.add_argument("--multihost", action="store_true",
                   help="call jax.distributed.initialize() (TPU pods; or set the coordinator flags)")
    p.add_argument("--coordinator_address", default=None)
    p.add_argument("--num_processes", type=int, default=None)
    p.add_argument("--process_id", type=int, default=None)

  data = commands.add_parser("data", help="inspect a task's data").add_subparsers(
      dest="data_command", required=True, parser_class=_OneLineParser)
  describe = data.add_parser("describe", help="examples, labels and corruption per split")
  gin_flags(describe, output_dir=False)
  describe.add_argument("--json", action="store_true", help="print one JSON object")

  gin_flags(commands.add_parser("train", help="prompt-tune the classifier (round 0 only)"))

  influence = commands.add_parser("influence", help="TracIn proponents/opponents of queries")
  influence.add_argument("--output_dir", required=True, help="a run written by train or run")
  influence.add_argument("--round", type=int, default=0)
  influence.add_argument("--queries", default="misclassified",
                         help="misclassified | validation | ids:1,2,3 (validation example ids) | "
                              "suspects (the round's selected training examples)")
  influence.add_argument("--top_k", type=int, default=5)
  influence.add_argument("--batch_size", type=int, default=32,
                         help="rows per TracIn batch (global: split over the mesh's data axis)")

  run = commands.add_parser("run", help="G-BAIR recovery rounds with report")
  gin_flags(run)
  run.add_argument("--review", action="store_true",
                   help="pause each recovery round after selection for `gbair review`; rerun "
                        "the same command to resume with the human decisions (not part of the "
                        "saved config)")

  review = commands.add_parser("review", help="review a paused round's suspects in a browser")
  review.add_argument("--output_dir", required=True, help="a run paused by `gbair run --review`")
  review.add_argument("--round", type=int, default=None,
                      help="the round (default: the latest one waiting for review)")
  review.add_argument("--port", type=int, default=8765, help="0 picks a free port")
  review.add_argument("--host", default="127.0.0.1",
                      help="interface to bind; anything but loopback exposes the page (warns)")
  review.add_argument("--score", action="store_true",
                      help="print how the decisions compare with the synthetic corruption's "
                           "ground truth, and exit")

  compare = commands.add_parser("compare", help="run several strategies on one config")
  gin_flags(compare)
  compare.add_argument("--strategies", default="tracin_opponents,loss,self_influence,random")

  bench = commands.add_parser("benchmark", help="every strategy of a suite over corruption seeds")
  gin_flags(bench)
  bench.add_argument("--seeds", default=None,
                     help="comma-separated corruption seeds; replaces benchmark.seeds")
  bench.add_argument("--quick", action="store_true",
                     help="add gin/benchmarks/quick.gin: minutes, development seeds")
  return parser


def _setup_gin(args, extra_bindings) -> None:
  from gbair_jax import config
  gin_files = args.gin_file
  if args.command == "benchmark":
    from gbair_jax.commands import benchmark as benchmark_command
    gin_files = benchmark_command.gin_files(args)
  config.parse_gin(gin_files, [*args.gin_bindings, *extra_bindings],
                   [p for p in args.gin_search_paths.split(",") if p])


def _maybe_distributed(args) -> None:
  if args.multihost or args.coordinator_address:
    from gbair_jax.runtime import process
    process.initialize(args.coordinator_address, args.num_processes, args.process_id)


def main(argv: list[str]) -> int:
  import_tensorflow_quietly()
  from gbair_jax import config
  rest, overrides = config.split_gin_overrides(argv)
  args = _parser().parse_args(rest)
  if args.command == "influence":
    if overrides:  # one rule for gin: influence reads the run's own config.gin
      flag = overrides[0].split(" ")[0]
      raise UserError(f"gbair influence takes no gin flags (got --gin.{flag}): it reads the "
                      "config.gin of --output_dir; start a new run to change it")
    from gbair_jax.commands import influence as influence_command
    influence_command.run(args.output_dir, args.round, args.queries, args.top_k,
                          args.batch_size)
    return 0
  if args.command == "review":
    from gbair_jax.commands import review as review_command
    if args.score:
      review_command.score(args.output_dir, args.round)
    else:
      if not 0 <= args.port <= 65535:
        raise UserError(f"--port={args.port}: must be in [0, 65535]")
      review_command.serve(args.output_dir, args.round, args.host, args.port)
    return 0
  _maybe_distributed(args)
  _setup_gin(args, overrides)
  if args.command == "data":
    from gbair_jax.data import dataset, describe
    from gbair_jax.runtime import files
    summary = describe.describe(dataset.load_data())
    print(files.dumps_json(summary, indent=None) if args.json
          else describe.format_description(summary))
  elif args.command == "train":
    from gbair_jax.commands import train as train_command
    train_command.run(args.output_dir)
  elif args.command == "run":
    from gbair_jax.recovery import loop
    result = loop.run(args.output_dir, review=args.review,
                      resume_command=shlex.join(["gbair", *argv]) if args.review else None)
    if "paused_for_review" in result:
      r = result["paused_for_review"]
      print(f"round {r} is waiting for review: gbair review "
            f"--output_dir={shlex.quote(args.output_dir)} --round={r}\n"
            "then rerun this command to retrain with the decisions")
  elif args.command == "compare":
    from gbair_jax.recovery import compare
    compare.compare(args.output_dir, [s for s in args.strategies.split(",") if s])
  elif args.command == "benchmark":
    from gbair_jax.commands import benchmark as benchmark_command
    benchmark_command.run(args, argv)
  return 0


def run() -> None:
  """Console-script entry point."""
  try:
    sys.exit(main(sys.argv[1:]))
  except UserError as e:
    # Gin appends "In call to configurable ..." lines; the first line is ours.
    from gbair_jax.config import one_line
    print(f"gbair: error: {one_line(e)}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  run()
