"""Shared fixtures' builders: a tiny synthetic sentiment task on the tiny random BERT."""
from __future__ import annotations

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
