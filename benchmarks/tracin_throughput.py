"""TracIn kernel throughput: per-example prompt gradients against the batched training
gradient on the same batch, and against a naive per-example `jax.grad` loop.

  .venv/bin/python benchmarks/tracin_throughput.py [--gin_file=gin/models/minilm.gin] \
      [--batch_size=32 --prompt_length=20 --text_tokens=44]
prints one JSON line with per_example_grads_per_s (copies and vmap),
train_step_examples_per_s, ratio (target >= 0.9), naive_loop_per_s and speedup_vs_naive
(target >= 10).
"""
from __future__ import annotations

import json

import common


def main() -> None:
  args = common.parser(__doc__).parse_args()
  spec, frozen, prompt, batch = common.setup(args)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gbair_jax.influence import per_example_grads as grads_lib  # pylint: disable=g-import-not-at-top
  from gbair_jax.train.trainer import mean_loss  # pylint: disable=g-import-not-at-top

  prompt = jnp.asarray(prompt)
  device_batch = grads_lib.device_batch(batch)
  loss_fn = spec.example_losses
  rates = {}
  for method in grads_lib.METHODS:
    rates[method] = common.examples_per_second(
        lambda m=method: jax.block_until_ready(
            grads_lib.per_example_grads(loss_fn, prompt, frozen, device_batch, method=m)),
        args.batch_size, args.steps, args.repeats)

  train_grad = jax.jit(jax.value_and_grad(mean_loss(spec)))
  train_rate = common.examples_per_second(
      lambda: jax.block_until_ready(train_grad(prompt, frozen, device_batch)),
      args.batch_size, args.steps, args.repeats)

  # Naive: one jitted gradient per example, looped in Python (Captum's default loop shape).
  single = jax.jit(jax.grad(lambda p, f, b: spec.example_losses(p, f, b)[0]))
  rows = [jax.tree.map(lambda x, i=i: x[i:i + 1], device_batch) for i in range(args.batch_size)]

  def naive():
    for row in rows:
      jax.block_until_ready(single(prompt, frozen, row))

  naive_rate = common.examples_per_second(naive, args.batch_size, 1, args.repeats)
  best = max(rates.values())
  print(json.dumps({
      "benchmark": "tracin_throughput", "backbone": spec.backbone.name,
      "batch_size": args.batch_size, "prompt_length": args.prompt_length,
      "text_tokens": args.text_tokens,
      "per_example_grads_per_s": round(rates[grads_lib.DEFAULT_METHOD], 2),
      "per_example_grads_per_s_by_method": {k: round(v, 2) for k, v in rates.items()},
      "train_step_examples_per_s": round(train_rate, 2),
      "ratio": round(rates[grads_lib.DEFAULT_METHOD] / train_rate, 3),
      "naive_loop_per_s": round(naive_rate, 2),
      "speedup_vs_naive": round(best / naive_rate, 1),
      **common.machine()}))


if __name__ == "__main__":
  main()
