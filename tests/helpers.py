"""Shared fixtures' builders: a tiny synthetic sentiment task on the tiny random BERT."""
from __future__ import annotations

import socket

import numpy as np

POSITIVE = ["good", "great", "fine", "lovely", "superb", "nice"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "nasty", "ugly"]


def synthetic_split(num: int, seed: int, id_offset: int = 0, corrupt: int = 0) -> dict[str, np.ndarray]:
  """Texts made of sentiment words; label 1 = positive. `corrupt` flips the first rows."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, num).astype(np.int32)
  texts = []
  for label in labels:
    words = rng.choice(POSITIVE if label else NEGATIVE, 3).tolist() + ["the", "movie"]
    rng.shuffle(words)
    texts.append(" ".join(words))
  label = labels.copy()
  label[:corrupt] = 1 - label[:corrupt]
  return {"example_id": np.arange(id_offset, id_offset + num, dtype=np.int64),
          "text": np.array(texts, dtype=object), "label": label, "original_label": labels,
          "is_corrupted": np.arange(num) < corrupt}


def free_port() -> int:
  """A free TCP port on localhost (for a local JAX coordinator)."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def logistic_loss(prompt, frozen, batch, per_example_prompt=None):
  """Logistic regression behind the TracIn engine's loss contract (weights = prompt), whose
  gradients are known in closed form: (sigmoid(w.x + b) - y) x."""
  import jax  # pylint: disable=g-import-not-at-top  (keeps helpers importable without JAX)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = batch["features"]
  weights = (prompt.reshape(1, -1) if per_example_prompt is None
             else per_example_prompt.reshape(x.shape[0], -1))
  logits = jnp.sum(x * weights, axis=1) + frozen["bias"]
  return jax.nn.softplus(logits) - batch["label"].astype(jnp.float32) * logits
