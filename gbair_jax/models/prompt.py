"""The soft prompt: P learned vectors prepended to the input embeddings, and its initializers.

Named as in the prompt-tuning codebase (`prompt/prompt`), so the trainable-parameter regex
`prompt/.*` selects it. The initializers need the frozen embedding table, so they run
outside Flax `init` on the pretrained weights and their result is the prompt's first value.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

# (rng, (P, D), embed, class_tokens, class_mask) -> [P, D]; `embed` maps int32 ids [N, L]
# to the frozen token embeddings [N, L, D].
PromptInitializer = Callable[..., jax.Array]


class Prompt(nn.Module):
  """Holds the [P, D] prompt and prepends it to every example of a batch."""

  length: int
  hidden_size: int

  @nn.compact
  def __call__(self, embeddings: jax.Array, per_example_prompt: jax.Array | None = None) -> jax.Array:
    prompt = self.param("prompt", nn.initializers.zeros, (self.length, self.hidden_size))
    batch = embeddings.shape[0]
    if per_example_prompt is None:
      # Broadcast, not copy: the gradient of the batch loss sums over examples.
      per_example_prompt = jnp.broadcast_to(prompt, (batch,) + prompt.shape)
    return jnp.concatenate([per_example_prompt.astype(embeddings.dtype), embeddings], axis=1)


@gin.configurable
def random_uniform(rng, shape, embed=None, class_tokens=None, class_mask=None, scale: float = 0.5):
  """Uniform in [-scale, scale] (the prompt-tuning paper's "random" baseline)."""
  del embed, class_tokens, class_mask
  return jax.random.uniform(rng, shape, jnp.float32, -scale, scale)


@gin.configurable
def sampled_vocabulary(rng, shape, embed, class_tokens=None, class_mask=None,
                       population_size: int = 5000, first_id: int = 1000):
  """Embeddings of tokens drawn from the `population_size` ids after `first_id`.

  Frequent real words start after the special tokens and rare pieces; sampling among them
  is the prompt-tuning codebase's `from_sample_of_embeddings` idea.
  """
  del class_tokens, class_mask
  ids = jax.random.randint(rng, (shape[0], 1), first_id, first_id + population_size)
  return embed(ids)[:, 0, :].astype(jnp.float32)


@gin.configurable
def class_labels(rng, shape, embed, class_tokens, class_mask, population_size: int = 5000,
                 first_id: int = 1000):
  """The first C prompt vectors are the mean embeddings of the class label strings; the
  rest are sampled vocabulary, as in the prompt-tuning codebase's class-label initializer."""
  rest = sampled_vocabulary(rng, shape, embed, population_size=population_size, first_id=first_id)
  class_embeddings = embed(jnp.asarray(class_tokens))
  weights = jnp.asarray(class_mask, jnp.float32)[..., None]
  means = (class_embeddings * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
  count = min(shape[0], means.shape[0])
  return rest.at[:count].set(means[:count].astype(jnp.float32))
