"""The prompt's optimizer and learning-rate schedule, chosen by gin.

Only the prompt is ever handed to the optimizer: backbone weights have no optimizer state
and receive no update.
"""
from __future__ import annotations

import gin
import numpy as np
import optax

from gbair_jax.errors import UserError


@gin.configurable
def learning_rate_schedule(learning_rate: float = 0.05, schedule: str = "constant",
                           warmup_steps: int = 0) -> optax.Schedule:
  """`constant`, or `warmup_constant` (linear warm-up over `warmup_steps`, then flat)."""
  if learning_rate <= 0:
    raise UserError(f"learning_rate_schedule.learning_rate must be > 0, got {learning_rate}")
  if schedule == "constant":
    return optax.constant_schedule(learning_rate)
  if schedule == "warmup_constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1)),
         optax.constant_schedule(learning_rate)], [max(warmup_steps, 1)])
  raise UserError(f"learning_rate_schedule.schedule: unknown '{schedule}' "
                  "(expected constant or warmup_constant)")


@gin.configurable
def make_optimizer(schedule: optax.Schedule, name: str = "adam",
                   weight_decay: float = 0.0) -> optax.GradientTransformation:
  """`adam` (default for small encoders) or `adafactor` (the prompt-tuning paper's choice)."""
  if name == "adam":
    return optax.adamw(schedule, weight_decay=weight_decay) if weight_decay else optax.adam(schedule)
  if name == "adafactor":
    # The prompt-tuning codebase: no parameter scaling, no momentum, lr 0.3.
    return optax.adafactor(schedule, multiply_by_parameter_scale=False, momentum=None,
                           weight_decay_rate=weight_decay or None)
  raise UserError(f"make_optimizer.name: unknown '{name}' (expected adam or adafactor)")


def epoch_learning_rate(schedule: optax.Schedule, first_step: int, num_steps: int) -> float:
  """The mean learning rate over an epoch's steps: TracIn's weight for that checkpoint."""
  steps = np.arange(first_step, first_step + num_steps)
  return float(np.mean([float(schedule(int(s))) for s in steps]))
