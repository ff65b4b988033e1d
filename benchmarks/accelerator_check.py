"""What one GPU/TPU machine does with gbair_jax: run by benchmarks/accelerator_check.sh.

Builds the (data, model) mesh over every device, then for float32 and bfloat16 matmuls
times the jitted training step and the per-example prompt gradients (the TracIn kernel)
on a global batch split over `data`, and divides the model FLOPs of the per-example
gradient pass (forward + backward, counted by XLA's cost analysis of the unpartitioned
program) by the device's peak. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Dense peak FLOP/s per JAX device, (bfloat16, float32 matmuls), from the vendors' data
# sheets. float32 matmuls run as TF32 on NVIDIA Ampere and later and as bfloat16 passes on
# TPU under JAX's default precision, so those are their float32 peaks. First match wins.
PEAK_FLOPS = (
    ("H200", 989e12, 494e12), ("H100 PCIe", 756e12, 378e12), ("H100", 989e12, 494e12),
    ("A100", 312e12, 156e12), ("L40S", 362e12, 183e12), ("L4", 121e12, 60e12),
    ("A10", 125e12, 62.5e12), ("V100", 125e12, 15.7e12), ("T4", 65e12, 8.1e12),
    ("TPU v6", 918e12, 918e12), ("TPU v5p", 459e12, 459e12), ("TPU v5", 197e12, 197e12),
    ("TPU v4", 275e12, 275e12), ("TPU v3", 61.5e12, 61.5e12), ("TPU v2", 23e12, 23e12),
)
DTYPES = ("float32", "bfloat16")


def peak_flops(device_kind: str, dtype: str, override_tflops: float | None) -> float | None:
  if override_tflops:
    return override_tflops * 1e12
  for name, bf16, fp32 in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return bf16 if dtype == "bfloat16" else fp32
  return None


def rate(fn, examples: int, steps: int, repeats: int) -> float:
  """Best-of-`repeats` examples/s of `fn()`, which must block until its result is ready."""
  fn()  # compile
  best = 0.0
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      fn()
    best = max(best, examples * steps / (time.perf_counter() - start))
  return best


def measure(args, dtype: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gbair_jax import config  # pylint: disable=g-import-not-at-top
  from gbair_jax.influence import per_example_grads as grads_lib  # pylint: disable=g-import-not-at-top
  from gbair_jax.models.classifier import build_classifier  # pylint: disable=g-import-not-at-top
  from gbair_jax.runtime import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from gbair_jax.train import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
  from gbair_jax.train.trainer import TrainState, make_train_step  # pylint: disable=g-import-not-at-top

  config.parse_gin([f"gin/models/{args.model}.gin"], [f"{args.model}.dtype = '{dtype}'"])
  spec = build_classifier(label_names=("negative", "positive"), prompt_length=args.prompt_length)
  mesh = mesh_lib.make_mesh()
  frozen = mesh_lib.replicate(spec.backbone.load_params(), mesh)
  batch_size = args.per_device_batch * mesh_lib.data_size(mesh)
  rng = np.random.default_rng(0)
  # Ids 1000..6000 are words in every gin/models vocabulary (tiny_bert has 6,144).
  batch = {"tokens": rng.integers(1000, 6000, (batch_size, args.text_tokens)).astype(np.int32),
           "mask": np.ones((batch_size, args.text_tokens), np.int32),
           "label": rng.integers(0, 2, batch_size).astype(np.int32),
           "valid": np.ones(batch_size, bool)}
  placed = mesh_lib.shard_batch(batch, mesh)  # on the devices once: time the devices
  prompt = mesh_lib.host_value(jax.jit(
      lambda f: spec.initial_prompt(jax.random.PRNGKey(0), f),
      out_shardings=mesh_lib.replicated(mesh))(frozen)).astype(np.float32)
  optimizer = optimizer_lib.make_optimizer(optimizer_lib.learning_rate_schedule())
  step = make_train_step(spec, optimizer, mesh)
  state = [mesh_lib.replicate(TrainState(step=np.zeros((), np.int32), prompt=prompt,
                                         opt_state=optimizer.init(prompt)), mesh)]

  def train_once():
    state[0], metrics = step(state[0], frozen, placed)
    jax.block_until_ready(metrics["loss"])

  replicated_prompt = mesh_lib.replicate(prompt, mesh)
  grads = lambda: jax.block_until_ready(grads_lib.sharded_per_example_grads(
      spec.example_losses, replicated_prompt, frozen, placed, mesh))
  train_rate = rate(train_once, batch_size, args.steps, args.repeats)
  grads_rate = rate(grads, batch_size, args.steps, args.repeats)

  # Model FLOPs of one per-example-gradient pass over the batch, unpartitioned (so the
  # count does not depend on the mesh), from XLA's cost model of the lowered program.
  shapes = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  lowered = jax.jit(grads_lib.per_example_grads_unjitted, static_argnums=(0,)).lower(
      spec.example_losses, shapes(prompt), shapes(frozen), shapes(batch))
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops_per_example = float(cost.get("flops", 0.0)) / batch_size if cost else None
  kind = str(jax.devices()[0].device_kind)
  peak = peak_flops(kind, dtype, args.peak_tflops)
  achieved = flops_per_example * grads_rate if flops_per_example else None
  return {
      "train_examples_per_s": round(train_rate, 2),
      "per_example_grads_per_s": round(grads_rate, 2),
      "ratio": round(grads_rate / train_rate, 3),
      "backward_pass_flops_per_example": flops_per_example,
      "backward_pass_tflops_per_s": round(achieved / 1e12, 4) if achieved else None,
      "peak_tflops_per_s": round(peak * jax.device_count() / 1e12, 2) if peak else None,
      "backward_pass_fraction_of_peak": (round(achieved / (peak * jax.device_count()), 4)
                                         if achieved and peak else None),
      "global_batch": batch_size,
  }


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true",
                 help="tiny random BERT, small shapes, one timed repeat: seconds on a CPU")
  p.add_argument("--model", default=None, help="gin/models/<model>.gin: minilm | tiny_bert")
  p.add_argument("--per_device_batch", type=int, default=None)
  p.add_argument("--prompt_length", type=int, default=20)
  p.add_argument("--text_tokens", type=int, default=None)
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--repeats", type=int, default=None)
  p.add_argument("--dtypes", default=",".join(DTYPES))
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="peak dense TFLOP/s per device, for a device not in the table")
  args = p.parse_args()
  quick = dict(model="tiny_bert", per_device_batch=8, text_tokens=12, steps=2, repeats=1)
  full = dict(model="minilm", per_device_batch=64, text_tokens=108, steps=10, repeats=3)
  for key, value in (quick if args.quick else full).items():
    if getattr(args, key) is None:
      setattr(args, key, value)

  import jax  # pylint: disable=g-import-not-at-top
  started = time.time()
  results = {dtype: measure(args, dtype) for dtype in args.dtypes.split(",") if dtype}
  out = {"benchmark": "accelerator_check", "device_kind": str(jax.devices()[0].device_kind),
         "platform": jax.devices()[0].platform, "device_count": jax.device_count(),
         "num_processes": jax.process_count(), "model": args.model,
         "per_device_batch": args.per_device_batch,
         "tokens": args.prompt_length + args.text_tokens, **results}
  if {"float32", "bfloat16"} <= set(results):
    out["bf16_speedup"] = {
        key: round(results["bfloat16"][key] / results["float32"][key], 3)
        for key in ("train_examples_per_s", "per_example_grads_per_s")}
  out["flops_counted_by"] = "XLA cost analysis of the unpartitioned per-example-gradient pass"
  out["seconds"] = round(time.time() - started, 1)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
