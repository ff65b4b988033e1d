"""What a selection strategy may look at in one round: the trained classifier, its epoch
checkpoints, the training set at its current labels, and the validation set."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from gbair_jax.models.classifier import ClassifierSpec
from gbair_jax.train.in_run import InRunResult, TrainingDynamics

Arrays = dict[str, np.ndarray]


def with_extra_rows(rows: Arrays, extra: Arrays | None) -> Arrays:
  """`rows` followed by `extra` (same columns), or `rows` when there is nothing extra."""
  if extra is None:
    return rows
  return {name: np.concatenate([values, extra[name]]) for name, values in rows.items()}


@dataclasses.dataclass
class RoundContext:
  spec: ClassifierSpec
  frozen: Any
  train: Arrays                                  # tokenised, labels as of this round
  validation: Arrays                             # tokenised, never corrupted
  # An ensemble's (train/ensemble.py) prompts are its member 0's; its logits are the mean.
  checkpoints: list[tuple[np.ndarray, float]]    # (prompt, learning rate) per epoch
  final_prompt: np.ndarray
  train_logits: np.ndarray                       # [N, C] at the final prompt
  validation_logits: np.ndarray                  # [M, C] at the final prompt
  seed: int
  batch_size: int = 32
  progress: bool = True
  mesh: Any = None                               # the experiment's mesh (None: one device)
  # With tracin.source = "in_run": what the training steps accumulated (train/in_run.py),
  # and the per-epoch training dynamics, [epochs, N] arrays in training-set order.
  in_run: InRunResult | None = None
  dynamics: TrainingDynamics | None = None
  round_dir: str | None = None                   # where a strategy may keep its own runs
  round_index: int = 0                           # 0: round 0's model (the labels as given)
  # run.train_on_validation: clean examples that joined every training run (after `train`,
  # never candidates). A strategy that trains prompts of its own trains on them too.
  extra_train: Arrays | None = None

  @property
  def misclassified(self) -> Arrays:
    """The validation examples the model gets wrong: G-BAIR's queries."""
    wrong = self.validation_logits.argmax(-1) != self.validation["label"]
    return {k: v[wrong] for k, v in self.validation.items()}
