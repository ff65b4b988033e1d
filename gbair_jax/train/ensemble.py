"""Seed ensembles of prompts: N prompts trained side by side, judged as one model.

One prompt-tuning run is a noisy draw: on the insults benchmark, round 0 retrained under
five seeds spans 0.70-0.74 test AUC (std 0.015, docs/BENCHMARKS.md), as much as a round of
correct relabels moves it, so a gate or a paired comparison between one retraining and
another reads mostly that noise. With gin `train_prompt.ensemble_size = N` every training
(rounds, references, a strategy's own folds) trains N prompts instead: member k starts from
its own initial prompt and sees its own data order, and the model's prediction is the mean
of the members' class probabilities. Member 0 is the single-prompt run of the same seed
(same initial prompt, same batches; equal up to float rounding), and N = 1 is that run.

The members are one [N, P, D] array trained by one jitted step (a step per member, the
frozen backbone shared), so a checkpoint is still one array per epoch. What reads
prompt gradients (TracIn, the gradient votes) reads member 0 (`first_member`): scoring costs
what it did, and the logits every strategy sees are the ensemble's.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gbair_jax.errors import UserError
from gbair_jax.train import batches as batches_lib


def check_size(ensemble_size) -> int:
  if isinstance(ensemble_size, bool) or not isinstance(ensemble_size, int) or ensemble_size < 1:
    raise UserError(f"train_prompt.ensemble_size={ensemble_size!r} must be an integer >= 1")
  return ensemble_size


def is_ensemble(prompt) -> bool:
  """A stack of member prompts [N, P, D] rather than one prompt [P, D]."""
  return np.ndim(prompt) == 3


def first_member(prompt):
  """Member 0 of an ensemble (the single-seed run), or the prompt itself."""
  return prompt[0] if is_ensemble(prompt) else prompt


def member_keys(seed: int, ensemble_size: int) -> list[jax.Array]:
  """Each member's initialisation key; member 0's is the single run's PRNGKey(seed)."""
  key = jax.random.PRNGKey(seed)
  return [key] + [jax.random.fold_in(key, k) for k in range(1, ensemble_size)]


def member_order(num_examples: int, seed: int, epoch: int, member: int) -> np.ndarray:
  """Member k's data order in an epoch; member 0's is the single run's."""
  if member == 0:
    return batches_lib.epoch_order(num_examples, seed, epoch)
  return np.random.default_rng([seed, epoch, member]).permutation(num_examples)


def member_batches(arrays, batch_size: int, seed: int, epoch: int, ensemble_size: int,
                   keys: tuple[str, ...]) -> batches_lib.Batches:
  """One epoch's batches for every member at once: each column [batch_size, N, ...]
  (rows first, so the mesh splits rows over `data` as for one prompt)."""
  num = len(arrays["label"])
  per_member = [batches_lib.iterate_batches(arrays, batch_size,
                                            member_order(num, seed, epoch, k), keys=keys)
                for k in range(ensemble_size)]

  def generate():
    for member_batch in zip(*per_member):
      yield {key: np.stack([b[key] for b in member_batch], axis=1) for key in member_batch[0]}

  return batches_lib.Batches(generate, batches_lib.num_batches(num, batch_size))


def mean_probability_logits(member_logits: jax.Array) -> jax.Array:
  """[N, B, C] member logits -> [B, C] log of the members' mean class probabilities."""
  log_probs = jax.nn.log_softmax(member_logits, axis=-1)
  return jax.nn.logsumexp(log_probs, axis=0) - jnp.log(member_logits.shape[0])
