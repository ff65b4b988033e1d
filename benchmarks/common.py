"""Shared set-up for the throughput benchmarks: a gin-configured classifier and one batch.

The batch has `text_tokens` real tokens per row (no padding), so the measured shape is
exactly prompt + text, as in docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parser(description: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--gin_file", action="append", default=None,
                 help="gin file(s) choosing the backbone (default gin/models/minilm.gin)")
  p.add_argument("--gin_bindings", action="append", default=[])
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--prompt_length", type=int, default=20)
  p.add_argument("--text_tokens", type=int, default=44)
  p.add_argument("--steps", type=int, default=5, help="timed calls per repeat")
  p.add_argument("--repeats", type=int, default=3, help="report the best repeat")
  return p


def setup(args):
  """(spec, frozen, prompt, batch) for the gin-configured backbone."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gbair_jax import config  # pylint: disable=g-import-not-at-top
  from gbair_jax.models.classifier import build_classifier  # pylint: disable=g-import-not-at-top

  config.parse_gin(args.gin_file or ["gin/models/minilm.gin"], args.gin_bindings)
  spec = build_classifier(label_names=("negative", "positive"), prompt_length=args.prompt_length)
  frozen = spec.backbone.load_params()
  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(1000, 20000, (args.batch_size, args.text_tokens)).astype(np.int32),
           "mask": np.ones((args.batch_size, args.text_tokens), np.int32),
           "label": rng.integers(0, 2, args.batch_size).astype(np.int32),
           "valid": np.ones(args.batch_size, bool)}
  prompt = spec.initial_prompt(jax.random.PRNGKey(0), frozen)
  return spec, frozen, prompt, batch


def examples_per_second(fn, examples_per_call: int, steps: int, repeats: int) -> float:
  """Best-of-`repeats` throughput of `fn()` (which must block until its result is ready)."""
  fn()  # compile
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      fn()
    rates.append(examples_per_call * steps / (time.perf_counter() - start))
  return max(rates)


def machine() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  return {"platform": jax.devices()[0].platform, "device": str(jax.devices()[0].device_kind),
          "cpu_count": os.cpu_count(), "rate_is": "best of the timed repeats"}


