"""Peak RSS of streamed TracIn at N = 20,000 and N = 200,000: memory must be flat in N.

    .venv/bin/python benchmarks/tracin_memory.py

prints one JSON line, e.g. {"peak_rss_mb": {"20000": 400.1, "200000": 404.0}, "ratio": 1.01, ...};
target: ratio <= 1.10. Each N runs in a fresh subprocess, measured with getrusage ru_maxrss.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VOCAB, WIDTH, TOKENS, PROMPT_LENGTH, CLASSES = 50, 8, 8, 4, 2


def tiny_loss(prompt, frozen, batch, per_example_prompt=None):
  """A tiny prompt classifier: [prompt; token embeddings] -> tanh layer -> mean -> classes."""
  import jax
  import jax.numpy as jnp
  embeddings = frozen["embedding"][batch["tokens"]]
  prompts = (jnp.broadcast_to(prompt, (embeddings.shape[0],) + prompt.shape)
             if per_example_prompt is None else per_example_prompt)
  hidden = jnp.tanh(jnp.concatenate([prompts, embeddings], axis=1) @ frozen["hidden"])
  log_probs = jax.nn.log_softmax(hidden.mean(axis=1) @ frozen["out"])
  return -jnp.take_along_axis(log_probs, batch["label"][:, None], axis=1)[:, 0]


def synthetic_batches(num_examples: int, batch_size: int, first_id: int = 0):
  """A lazily generated stream (the data loader, not the engine, owns the dataset)."""
  import numpy as np
  for start in range(0, num_examples, batch_size):
    rng = np.random.default_rng(start)
    yield {"tokens": rng.integers(0, VOCAB, (batch_size, TOKENS)).astype(np.int32),
           "label": rng.integers(0, CLASSES, batch_size).astype(np.int32),
           "example_id": np.arange(start, start + batch_size, dtype=np.int64) + first_id,
           "valid": np.arange(start, start + batch_size) < num_examples}


def measure(num_examples: int, batch_size: int, num_queries: int, num_checkpoints: int,
            top_k: int) -> dict:
  """Scores N synthetic examples against M queries; returns this process's peak RSS."""
  import numpy as np
  from gbair_jax.influence import tracin
  rng = np.random.default_rng(0)
  frozen = {"embedding": rng.normal(size=(VOCAB, WIDTH)).astype(np.float32),
            "hidden": rng.normal(size=(WIDTH, 16)).astype(np.float32),
            "out": rng.normal(size=(16, CLASSES)).astype(np.float32)}
  checkpoints = [(rng.normal(size=(PROMPT_LENGTH, WIDTH)).astype(np.float32), 0.1)
                 for _ in range(num_checkpoints)]
  queries = list(synthetic_batches(num_queries, num_queries, first_id=10**9))
  started = time.perf_counter()
  result = tracin.tracin_scores(tiny_loss, checkpoints, frozen,
                                synthetic_batches(num_examples, batch_size), queries,
                                top_k=top_k, progress=False)
  seconds = time.perf_counter() - started
  assert result.example_ids.shape == (num_examples,)
  peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
  return {"n": num_examples, "peak_rss_mb": round(peak_kb / 1024, 1),
          "seconds": round(seconds, 2), "examples_per_s": round(num_examples / seconds)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--queries", type=int, default=64)
  parser.add_argument("--checkpoints", type=int, default=3)
  parser.add_argument("--top_k", type=int, default=10)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  settings = dict(batch_size=args.batch_size, num_queries=args.queries,
                  num_checkpoints=args.checkpoints, top_k=args.top_k)
  if args.child:
    print(json.dumps(measure(args.sizes[0], **settings)))
    return
  runs = []
  for size in args.sizes:
    # A fresh process per N: ru_maxrss is a high-water mark that never goes down.
    command = [sys.executable, __file__, "--child", "--sizes", str(size),
               "--batch_size", str(args.batch_size), "--queries", str(args.queries),
               "--checkpoints", str(args.checkpoints), "--top_k", str(args.top_k)]
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    runs.append(json.loads(output.stdout.strip().splitlines()[-1]))
  peaks = {str(run["n"]): run["peak_rss_mb"] for run in runs}
  print(json.dumps({"peak_rss_mb": peaks,
                    "ratio": round(runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"], 3),
                    "target_ratio_at_most": 1.10,
                    "examples_per_s": {str(r["n"]): r["examples_per_s"] for r in runs},
                    **settings}))


if __name__ == "__main__":
  main()
