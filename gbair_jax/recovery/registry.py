"""The strategy registry: `@register(name)` on a function `(RoundContext) -> scores [N]`,
`get_strategy(name)` to look one up. A leaf module: strategies import it, never the reverse;
the round loop (recovery/loop.py) imports the built-in strategy modules, so they are
registered (and their gin configurables known) before any gin file is parsed.

Higher score = more likely mislabeled; -inf means "not a suspect". All strategies see the
same `RoundContext`, so `gbair compare` and `gbair benchmark` put them on equal terms.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from gbair_jax.errors import UserError

Strategy = Callable[..., np.ndarray]  # (RoundContext) -> scores [N]
STRATEGIES: dict[str, Strategy] = {}


def register(name: str):
  """Decorator: makes `fn` the strategy called `name` (`run.strategy = "name"`)."""
  def wrap(fn: Strategy) -> Strategy:
    STRATEGIES[name] = fn
    return fn
  return wrap


def get_strategy(name: str) -> Strategy:
  if name not in STRATEGIES:
    raise UserError(f"recovery strategy '{name}' is unknown (expected one of: "
                    f"{', '.join(sorted(STRATEGIES))})")
  return STRATEGIES[name]


def get_named_strategy(binding: str, name: str, caller: str) -> Strategy:
  """The strategy that a combining strategy's gin `binding` names (`caller`: the combining
  strategy's own name, which would recurse forever); errors say the binding."""
  if name == caller:
    raise UserError(f"{binding} = {name!r}: names {caller} itself")
  try:
    return get_strategy(name)
  except UserError as e:
    raise UserError(f"{binding}: {e}") from None
