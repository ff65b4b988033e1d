"""PromptClassifier: soft prompt + frozen backbone + verbalizers -> class logits [B, C].

No trained head: classes are scored by rank classification over their label strings
(similarity for encoders, log-likelihood for decoders), so only the prompt learns.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from gbair_jax.errors import UserError
from gbair_jax.models import prompt as prompt_lib
from gbair_jax.models.backbone import Params, PretrainedBackbone


class PromptClassifier(nn.Module):
  """`apply({"params": {"prompt": ..., "backbone": ...}}, tokens, mask) -> logits [B, C]`.

  `per_example_prompt` [B, P, D] replaces the shared prompt: the gradient of the summed
  loss w.r.t. it is every example's own prompt gradient, from one batched backward pass.
  """

  backbone: nn.Module
  prompt_length: int
  class_tokens: tuple  # [C][L] ints, hashable so the module stays a static value
  class_mask: tuple

  def setup(self):
    self.prompt = prompt_lib.Prompt(self.prompt_length, self.backbone.hidden_size)

  def __call__(self, tokens: jax.Array, mask: jax.Array,
               per_example_prompt: jax.Array | None = None) -> jax.Array:
    embeddings = self.backbone.embed(tokens)
    embeddings = self.prompt(embeddings, per_example_prompt)
    prompt_mask = jnp.ones((mask.shape[0], self.prompt_length), mask.dtype)
    mask = jnp.concatenate([prompt_mask, mask], axis=1)
    return self.backbone.score_classes(embeddings, mask, jnp.asarray(self.class_tokens, jnp.int32),
                                       jnp.asarray(self.class_mask, jnp.int32),
                                       prompt_length=self.prompt_length)


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
  """Everything the trainer, TracIn and recovery need to run a prompt classifier."""

  model: PromptClassifier
  backbone: PretrainedBackbone
  label_names: tuple[str, ...]

  def logits(self, prompt: jax.Array, backbone_params: Params, tokens, mask,
             per_example_prompt=None) -> jax.Array:
    variables = {"params": {"prompt": {"prompt": prompt}, "backbone": backbone_params}}
    return self.model.apply(variables, tokens, mask, per_example_prompt)

  def example_losses(self, prompt, backbone_params, batch, per_example_prompt=None) -> jax.Array:
    """Cross-entropy of each example at its current label: float32 [B]."""
    logits = self.logits(prompt, backbone_params, batch["tokens"], batch["mask"], per_example_prompt)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_probs, batch["label"][:, None].astype(jnp.int32), axis=-1)[:, 0]

  def initial_prompt(self, rng, backbone_params: Params, initializer=None) -> jax.Array:
    initializer = initializer or prompt_lib.class_labels
    embed = lambda ids: self.backbone.module.apply({"params": backbone_params}, ids,
                                                   method="embed")
    shape = (self.model.prompt_length, self.backbone.module.hidden_size)
    return initializer(rng, shape, embed, np.asarray(self.model.class_tokens),
                       np.asarray(self.model.class_mask))


@gin.configurable
def build_classifier(backbone: PretrainedBackbone, label_names: Sequence[str],
                     prompt_length: int = 20) -> ClassifierSpec:
  """Wires a backbone and the task's label strings into a prompt classifier."""
  if prompt_length < 1:
    raise UserError(f"build_classifier.prompt_length must be >= 1, got {prompt_length}")
  tokens, mask = backbone.encode_classes(list(label_names))
  to_tuple = lambda a: tuple(tuple(int(v) for v in row) for row in np.asarray(a))
  model = PromptClassifier(backbone=backbone.module, prompt_length=prompt_length,
                           class_tokens=to_tuple(tokens), class_mask=to_tuple(mask))
  return ClassifierSpec(model=model, backbone=backbone, label_names=tuple(label_names))
