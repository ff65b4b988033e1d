"""Splitting overhead of the mesh: training examples/s and per-example gradients/s on 1, 2,
4 and 8 fake CPU devices of the same cores (total compute is fixed, so a good split keeps
the 1-device rate; target: 8 devices keep >= 0.8 of it).

  .venv/bin/python benchmarks/scaling.py [--gin_file=gin/models/minilm.gin] \
      [--devices=1,2,4,8 --batch_size=32 --prompt_length=20 --text_tokens=44]
prints one JSON line: {"rates": {"1": {"train_examples_per_s", "per_example_grads_per_s"},
...}, "kept_at_8_devices": {...}, ...}.

One process with 8 fake CPU devices; a (data=n, model=1) mesh over the first n of them
for each n. Repeats go round-robin over the device counts, so a load that comes and goes
(a shared machine) hits every count alike; each rate is the best repeat. As in the
trainer, every step feeds its global batch from the host and nothing waits per step.
"""
from __future__ import annotations

import json
import os
import sys
import time

ARGS = sys.argv[1:]
_COUNTS = next((a.split("=", 1)[1] for a in ARGS if a.startswith("--devices=")), "1,2,4,8")
_FLAGS = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")]
# Must be set before JAX starts.
os.environ["XLA_FLAGS"] = " ".join(
    _FLAGS + [f"--xla_force_host_platform_device_count="
              f"{max(int(c) for c in _COUNTS.split(',') if c)}"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import common  # noqa: E402


def main() -> None:
  p = common.parser(__doc__)
  p.add_argument("--devices", default="1,2,4,8", help="fake CPU device counts to compare")
  args = p.parse_args()
  counts = [int(c) for c in args.devices.split(",") if c]
  spec, frozen, prompt, batch = common.setup(args)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gbair_jax.influence import per_example_grads as grads_lib  # pylint: disable=g-import-not-at-top
  from gbair_jax.runtime import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from gbair_jax.train import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
  from gbair_jax.train.trainer import TrainState, make_train_step  # pylint: disable=g-import-not-at-top

  prompt = np.asarray(prompt, np.float32)
  frozen = jax.device_get(frozen)
  device_batch = grads_lib.device_batch(batch)
  optimizer = optimizer_lib.make_optimizer(optimizer_lib.learning_rate_schedule())
  runs = {}
  for count in counts:
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:count])
    placed_frozen = mesh_lib.replicate(frozen, mesh)
    step = make_train_step(spec, optimizer, mesh)
    state = [mesh_lib.replicate(TrainState(step=np.zeros((), np.int32), prompt=prompt,
                                           opt_state=optimizer.init(prompt)), mesh)]

    def train(mesh=mesh, step=step, state=state, frozen=placed_frozen):
      loss = None
      for _ in range(args.steps):
        state[0], metrics = step(state[0], frozen, mesh_lib.shard_batch(batch, mesh))
        loss = metrics["loss"]
      jax.block_until_ready(loss)

    def grads(mesh=mesh, frozen=placed_frozen):
      out = None
      for _ in range(args.steps):
        out = grads_lib.sharded_per_example_grads(spec.example_losses, prompt, frozen,
                                                  device_batch, mesh)
      jax.block_until_ready(out)

    train()  # compile
    grads()
    runs[count] = {"train_examples_per_s": train, "per_example_grads_per_s": grads}

  best = {count: {name: 0.0 for name in fns} for count, fns in runs.items()}
  for _ in range(args.repeats):
    for count, fns in runs.items():
      for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        rate = args.batch_size * args.steps / (time.perf_counter() - start)
        best[count][name] = max(best[count][name], rate)
  first, last = best[min(counts)], best[max(counts)]
  print(json.dumps({
      "benchmark": "scaling", "backbone": _backbone_name(args), "batch_size": args.batch_size,
      "prompt_length": args.prompt_length, "text_tokens": args.text_tokens,
      "rates": {str(c): {k: round(v, 2) for k, v in r.items()} for c, r in best.items()},
      f"kept_at_{max(counts)}_devices": {k: round(last[k] / first[k], 3) for k in first},
      "target": 0.8, "cpu_count": os.cpu_count(),
      "rate_is": "best of the timed repeats, taken round-robin over the device counts"}))


def _backbone_name(args) -> str:
  files = args.gin_file or ["gin/models/minilm.gin"]
  return ",".join(os.path.splitext(os.path.basename(f))[0] for f in files)


if __name__ == "__main__":
  main()
