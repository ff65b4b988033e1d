"""`class_vote_calibrated`: the clean-label vote, acting only where it is likely right.

A round that relabels with precision p fixes (2p - 1) x budget labels net, so below 0.5 it
adds noise; and a fixed budget spends itself on the wrong class when the noise is not
uniform (class-conditional noise: most flips in one direction). `class_vote_knn` ranks the
flips well but cannot say how many there are, nor in which class.

The clean validation voters calibrate it, at no extra pass. The vote score is
antisymmetric in the label, so each voter, voted on by the others (itself left out), gives
both a score of a right label (at its own class) and of a wrong one (as if labelled with the
other class): `gradient_vote.Vote.voter_scores`. Per cell (label a, other class b):

  clean   ~ N(mu_clean, sigma^2)     the a-voters at label a
  flipped ~ N(mu_flipped, sigma^2)   the b-voters as if labelled a (pooled variance: the
                                     log-odds below are linear, so rank = vote rank)
  pi      the share of wrong labels among the training examples of the cell: the mixture
          weight that maximises their likelihood (EM with the two components fixed)
  log-odds(z) = log [pi N(s(z); mu_flipped) / ((1 - pi) N(s(z); mu_clean))]

An example is a suspect only when its posterior of being wrong exceeds `min_posterior`
(0.5: the break-even of a relabel), and suspects of every cell are ranked by that posterior.
So each class gets the budget its estimated noise earns, and a round with few likely flips
changes fewer labels than the budget (like confident learning's count of label issues).
A cell whose voters do not separate (mu_flipped <= mu_clean, or fewer than two of either)
has no suspects.

The voters were trained on with their clean labels when `run.train_on_validation` is on,
the candidates with their noisy ones; the vote reads label-free margin gradients, so the
calibration assumes memorisation moves them little. `calibration.json` in the round's
directory records each cell's estimate, for the report and for checking that assumption.
"""
from __future__ import annotations

import gin
import numpy as np

from gbair_jax.errors import UserError
from gbair_jax.recovery import embedding_vote
from gbair_jax.recovery import gradient_vote
from gbair_jax.recovery.context import RoundContext
from gbair_jax.recovery.registry import register
from gbair_jax.report.writer import CALIBRATION_FILE
from gbair_jax.runtime import files
from gbair_jax.runtime import process

_PRIOR_RANGE = (1e-4, 1 - 1e-4)


def flip_log_odds(scores: np.ndarray, clean: np.ndarray, flipped: np.ndarray,
                  iterations: int = 200) -> tuple[np.ndarray, dict]:
  """Log-odds that each score (at least one) belongs to a wrong label (module docstring),
  and the cell's estimate ({"prior", "mu_clean", "mu_flipped", "sigma"}); log-odds -inf
  everywhere when the voters cannot calibrate the cell."""
  scores = np.asarray(scores, np.float64)
  if len(clean) < 2 or len(flipped) < 2 or np.mean(flipped) <= np.mean(clean):
    return np.full(len(scores), -np.inf), {"prior": None}
  mu_clean, mu_flipped = float(np.mean(clean)), float(np.mean(flipped))
  pooled = (np.sum((clean - mu_clean) ** 2) + np.sum((flipped - mu_flipped) ** 2))
  sigma = max(float(np.sqrt(pooled / (len(clean) + len(flipped) - 2))), 1e-12)
  # log N(s; mu_flipped) - log N(s; mu_clean), the shared variance cancelling out.
  likelihood_ratio = ((scores - mu_clean) ** 2 - (scores - mu_flipped) ** 2) / (2 * sigma ** 2)
  prior = 0.5
  for _ in range(iterations):
    log_odds = likelihood_ratio + np.log(prior / (1 - prior))
    posterior = 0.5 * (1 + np.tanh(log_odds / 2))  # the logistic, without exp overflow
    updated = float(np.clip(np.mean(posterior), *_PRIOR_RANGE))
    if abs(updated - prior) < 1e-9:
      break
    prior = updated
  log_odds = likelihood_ratio + np.log(prior / (1 - prior))
  return log_odds, {"prior": prior, "mu_clean": mu_clean, "mu_flipped": mu_flipped,
                    "sigma": sigma}


def calibrated_scores(vote: gradient_vote.Vote, labels: np.ndarray, min_posterior: float
                      ) -> tuple[np.ndarray, list[dict]]:
  """Log-odds of a wrong label for the suspects (posterior > `min_posterior`), -inf for the
  rest; and one record per cell."""
  labels = np.asarray(labels)
  out = np.full(len(labels), -np.inf)
  cells = []
  threshold = np.log(min_posterior / (1 - min_posterior))
  for (a, b), (clean, flipped) in sorted(vote.voter_scores.items()):
    rows = np.flatnonzero((labels == a) & (vote.others == b) & np.isfinite(vote.scores))
    if not len(rows):
      continue
    log_odds, estimate = flip_log_odds(vote.scores[rows], clean, flipped)
    suspects = log_odds > threshold
    out[rows[suspects]] = log_odds[suspects]
    cells.append({"label": int(a), "other": int(b), "examples": int(len(rows)),
                  "clean_voters": int(len(clean)), "flipped_voters": int(len(flipped)),
                  **estimate, "estimated_wrong": (None if estimate["prior"] is None else
                                                  round(estimate["prior"] * len(rows), 1)),
                  "suspects": int(np.sum(suspects))})
  return out, cells


@register("class_vote_calibrated")
@gin.configurable(denylist=["ctx"])
def class_vote_calibrated_strategy(ctx: RoundContext, neighbours: int = 20, center: bool = True,
                                   min_posterior: float = 0.5,
                                   space: str = "gradient") -> np.ndarray:
  """`class_vote_knn` (`space="gradient"`) or `class_vote_embedding` (`"embedding"`: frozen
  sentence embeddings, validation voters), keeping only examples whose calibrated posterior
  of a wrong label exceeds `min_posterior`, ranked by it (module docstring)."""
  if isinstance(min_posterior, bool) or not isinstance(min_posterior, (int, float)) or not (
      0 < min_posterior < 1):
    raise UserError(f"class_vote_calibrated_strategy.min_posterior = {min_posterior!r}: "
                    "must be a number in (0, 1)")
  if space == "gradient":
    vote = gradient_vote.class_vote(ctx, neighbours, center,
                                    binding="class_vote_calibrated_strategy.neighbours")
  elif space == "embedding":
    vote = embedding_vote.embedding_vote(ctx, neighbours, center,
                                         binding="class_vote_calibrated_strategy")
  else:
    raise UserError(f"class_vote_calibrated_strategy.space='{space}' is unknown "
                    "(expected gradient or embedding)")
  scores, cells = calibrated_scores(vote, ctx.train["label"], float(min_posterior))
  if ctx.round_dir is not None and process.is_primary():
    files.write_json(files.join(ctx.round_dir, CALIBRATION_FILE),
                     {"min_posterior": min_posterior, "cells": cells})
  return scores
