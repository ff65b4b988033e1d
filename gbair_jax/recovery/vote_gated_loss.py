"""`vote_gated_loss`: the clean-label vote says which labels look wrong, the loss says
which of those to change first.

Why (Rotten Tomatoes uniform 30%, warm-started, docs/BENCHMARKS.md): the vote's first
round fixed as many flipped labels as `loss`'s or more, yet raised test AUC less over the
model trained as long without a change. The flips it fixed had lower loss (mean loss
percentile about 0.80 against 0.95): the vote finds labels that sit among the other
class's clean examples whether or not the model fights them, while `loss` fixes the flips
the model already contradicts, whose gradients pull it hardest the wrong way. `rank_fusion`
averages the two rankings, which lets a very high loss outvote a clean-looking
neighbourhood; here the vote only gates.

The score is the example's loss at the round's model where the vote's score exceeds
`min_vote` (0: more of the other class's voters than of its own label's, as the vote
weighs them), and -inf elsewhere: never a suspect. When fewer examples pass than the
budget, the round changes fewer labels. The vote is any registered strategy
(`vote_gated_loss_strategy.vote`), run with its own gin bindings.
"""
from __future__ import annotations

import gin
import numpy as np

from gbair_jax.errors import UserError
from gbair_jax.recovery import strategies
from gbair_jax.recovery.context import RoundContext
from gbair_jax.recovery.registry import get_named_strategy, register


def gated(vote_scores: np.ndarray, losses: np.ndarray, min_vote: float) -> np.ndarray:
  """`losses` where `vote_scores` > `min_vote`, -inf elsewhere."""
  return np.where(np.asarray(vote_scores) > min_vote, np.asarray(losses, np.float64), -np.inf)


@register("vote_gated_loss")
@gin.configurable(denylist=["ctx"])
def vote_gated_loss_strategy(ctx: RoundContext, vote: str = "class_vote_embedding",
                             min_vote: float = 0.0) -> np.ndarray:
  """Loss ranking among the examples the `vote` strategy scores above `min_vote`."""
  if isinstance(min_vote, bool) or not isinstance(min_vote, (int, float)) or not np.isfinite(
      min_vote):
    raise UserError(f"vote_gated_loss_strategy.min_vote = {min_vote!r}: must be a finite number")
  vote_fn = get_named_strategy("vote_gated_loss_strategy.vote", vote, "vote_gated_loss")
  return gated(vote_fn(ctx), strategies.current_label_losses(ctx), float(min_vote))
