"""The strategy registry: `@register(name)` on a function `(RoundContext) -> scores [N]`,
`get_strategy(name)` to look one up. A leaf module: strategies import it, never the reverse.

Higher score = more likely mislabeled; -inf means "not a suspect". All strategies see the
same `RoundContext`, so `gbair compare` and `gbair benchmark` put them on equal terms.
"""
from __future__ import annotations

import importlib
from typing import Callable

import numpy as np

from gbair_jax.errors import UserError

Strategy = Callable[..., np.ndarray]  # (RoundContext) -> scores [N]
STRATEGIES: dict[str, Strategy] = {}

# The modules whose strategies every run can name; imported by name on the first look-up,
# so this module imports none of them (and a strategy module may import another freely).
BUILT_IN = ("gbair_jax.recovery.strategies", "gbair_jax.recovery.tracin_strategies",
            "gbair_jax.recovery.training_dynamics", "gbair_jax.recovery.gradient_vote")


def register(name: str):
  """Decorator: makes `fn` the strategy called `name` (`run.strategy = "name"`)."""
  def wrap(fn: Strategy) -> Strategy:
    STRATEGIES[name] = fn
    return fn
  return wrap


def get_strategy(name: str) -> Strategy:
  for module in BUILT_IN:
    importlib.import_module(module)
  if name not in STRATEGIES:
    raise UserError(f"recovery strategy '{name}' is unknown (expected one of: "
                    f"{', '.join(sorted(STRATEGIES))})")
  return STRATEGIES[name]
