"""`vote_then_loss`: the clean-label vote chooses the first rounds, the model's loss the rest.

Why (Rotten Tomatoes uniform 30%, warm-started, development seeds 3 and 4,
docs/BENCHMARKS.md): the default vote, `class_vote_embedding`, ranks in a frozen sentence
embedding space, so its ranking hardly moves between rounds: round 1 takes the next
examples of nearly the same list, at lower precision (0.75 and 0.70 in round 0, 0.65 and
0.60 in round 1), while `loss` reads the retrained model, which has learned from the
corrected labels (0.70 in round 1 on both seeds). The vote is most useful where the model
is most misled, on the labels as given; afterwards the model itself knows more.

Measured there (docs/BENCHMARKS.md, "The vote first, then the loss"): no gain. On the
default's own round-1 model the loss picked as many wrong labels as the vote (50 against 50
over the two seeds); `loss`'s better second rounds come from its own run. Selectable, off.

Rounds before `vote_rounds` use the `vote` strategy (any registered one, with its own gin
bindings); later rounds rank by the training loss at the round's model, as `loss` does.
"""
from __future__ import annotations

import gin
import numpy as np

from gbair_jax.errors import UserError
from gbair_jax.recovery import strategies
from gbair_jax.recovery.context import RoundContext
from gbair_jax.recovery.registry import get_named_strategy, register


@register("vote_then_loss")
@gin.configurable(denylist=["ctx"])
def vote_then_loss_strategy(ctx: RoundContext, vote: str = "class_vote_embedding",
                            vote_rounds: int = 1) -> np.ndarray:
  """`vote`'s scores in rounds 0 .. vote_rounds - 1, the training loss after."""
  if isinstance(vote_rounds, bool) or not isinstance(vote_rounds, int) or vote_rounds < 0:
    raise UserError(f"vote_then_loss_strategy.vote_rounds = {vote_rounds!r}: must be an "
                    "integer >= 0")
  vote_fn = get_named_strategy("vote_then_loss_strategy.vote", vote, "vote_then_loss")
  if ctx.round_index < vote_rounds:
    return vote_fn(ctx)
  return strategies.current_label_losses(ctx)
