"""Training throughput of the prompt classifier: examples/s of the jitted train step.

  .venv/bin/python benchmarks/train_throughput.py [--gin_file=gin/models/minilm.gin] \
      [--batch_size=32 --prompt_length=20 --text_tokens=44] [--ensemble_size=3]
prints one JSON line: {"train_examples_per_s": ..., shapes, machine}. With --ensemble_size=N
the step trains N member prompts (train_prompt.ensemble_size), each on its own batch of
--batch_size rows, and the rate counts every member's rows (N x batch_size per step).
"""
from __future__ import annotations

import json

import common


def main() -> None:
  p = common.parser(__doc__)
  p.add_argument("--ensemble_size", type=int, default=1)
  args = p.parse_args()
  spec, frozen, prompt, batch = common.setup(args)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gbair_jax.train import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
  from gbair_jax.train.trainer import TrainState, make_train_step  # pylint: disable=g-import-not-at-top

  optimizer = optimizer_lib.make_optimizer(optimizer_lib.learning_rate_schedule())
  members = args.ensemble_size
  init = optimizer.init
  if members > 1:  # the members' rows side by side: columns [batch_size, N, ...]
    prompt = jnp.stack([prompt] * members)
    batch = {k: np.stack([v] * members, axis=1) for k, v in batch.items()}
    init = jax.vmap(optimizer.init)
  step = make_train_step(spec, optimizer, ensemble=members > 1)
  state = [TrainState(step=jnp.zeros((), jnp.int32), prompt=jnp.asarray(prompt),
                      opt_state=init(jnp.asarray(prompt)))]

  def one_step():
    state[0], metrics = step(state[0], frozen, batch)
    jax.block_until_ready(metrics["loss"])

  rate = common.examples_per_second(one_step, args.batch_size * members, args.steps,
                                    args.repeats)
  print(json.dumps({"benchmark": "train_throughput", "train_examples_per_s": round(rate, 2),
                    "batch_size": args.batch_size, "ensemble_size": members,
                    "prompt_length": args.prompt_length,
                    "text_tokens": args.text_tokens, "backbone": spec.backbone.name,
                    **common.machine()}))


if __name__ == "__main__":
  main()
