"""Splitting overhead of the mesh: training examples/s and per-example gradients/s on 1, 2,
4 and 8 fake CPU devices of the same cores (total compute is fixed, so a good split keeps
the 1-device rate; target: 8 devices keep >= 0.8 of it).

  .venv/bin/python benchmarks/scaling.py [--gin_file=gin/models/minilm.gin] \
      [--devices=1,2,4,8 --batch_size=32 --prompt_length=20 --text_tokens=44]
prints one JSON line: {"rates": {"1": {"train_examples_per_s", "per_example_grads_per_s"},
...}, "kept_at_8": {...}, ...}. Each device count runs in its own process (the fake device
count is fixed when JAX starts); batches are global, split over the mesh's `data` axis.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import common


def measure(args) -> dict:
  """One device count (this process's devices): both rates on a (data=all, model=1) mesh."""
  spec, frozen, prompt, batch = common.setup(args)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gbair_jax.influence import per_example_grads as grads_lib  # pylint: disable=g-import-not-at-top
  from gbair_jax.runtime import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from gbair_jax.train import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
  from gbair_jax.train.trainer import TrainState, make_train_step  # pylint: disable=g-import-not-at-top

  mesh = mesh_lib.make_mesh()
  frozen = mesh_lib.replicate(frozen, mesh)
  prompt = np.asarray(prompt, np.float32)
  optimizer = optimizer_lib.make_optimizer(optimizer_lib.learning_rate_schedule())
  step = make_train_step(spec, optimizer, mesh)
  state = [mesh_lib.replicate(TrainState(step=np.zeros((), np.int32), prompt=prompt,
                                         opt_state=optimizer.init(prompt)), mesh)]

  def one_step():  # as the trainer does it: feed the host batch, step, read the loss
    state[0], metrics = step(state[0], frozen, mesh_lib.shard_batch(batch, mesh))
    mesh_lib.host_value(metrics["loss"])

  train = common.examples_per_second(one_step, args.batch_size, args.steps, args.repeats)
  device_batch = grads_lib.device_batch(batch)
  grads = common.examples_per_second(
      lambda: jax.block_until_ready(grads_lib.sharded_per_example_grads(
          spec.example_losses, prompt, frozen, device_batch, mesh)),
      args.batch_size, args.steps, args.repeats)
  return {"train_examples_per_s": round(train, 2), "per_example_grads_per_s": round(grads, 2),
          "mesh": mesh_lib.describe(mesh)["mesh"]}


def main() -> None:
  p = common.parser(__doc__)
  p.add_argument("--devices", default="1,2,4,8", help="fake CPU device counts to compare")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    print(json.dumps(measure(args)))
    return
  rates = {}
  for count in [int(c) for c in args.devices.split(",") if c]:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
           "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={count}"])}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *sys.argv[1:]],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
      sys.exit(f"scaling.py: {count} devices failed:\n{out.stderr[-3000:]}")
    rates[str(count)] = json.loads(out.stdout.strip().splitlines()[-1])
  first, last = rates[min(rates, key=int)], rates[max(rates, key=int)]
  kept = {key: round(last[key] / first[key], 3)
          for key in ("train_examples_per_s", "per_example_grads_per_s")}
  print(json.dumps({"benchmark": "scaling", "backbone": _backbone_name(args),
                    "batch_size": args.batch_size, "prompt_length": args.prompt_length,
                    "text_tokens": args.text_tokens, "rates": rates,
                    f"kept_at_{max(rates, key=int)}_devices": kept, "target": 0.8,
                    "cpu_count": os.cpu_count(), "rate_is": "best of the timed repeats"}))


def _backbone_name(args) -> str:
  files = args.gin_file or ["gin/models/minilm.gin"]
  return ",".join(os.path.splitext(os.path.basename(f))[0] for f in files)


if __name__ == "__main__":
  main()
