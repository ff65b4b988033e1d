"""The contract every frozen backbone (BERT/MiniLM, T5, LLaMA) fulfils.

A backbone is a `flax.linen.Module` with two methods, plus a `PretrainedBackbone` bundle
that knows how to load its frozen weights and how to turn text into its tokens. The
`PromptClassifier` only ever talks to this contract, so trainer, TracIn and recovery run
unchanged on every backbone.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Params = Any  # a nested dict of arrays (Flax "params" collection)

# Attention logit of a masked key, in every backbone: exp() of it underflows to 0 in float32
# and bfloat16, while it stays finite there (-inf would turn a fully masked row, e.g. a
# padding row, into NaN instead of a uniform softmax).
MASK_VALUE = -1e10


class Backbone(Protocol):
  """Methods a backbone Module provides (called through `module.apply(..., method=...)`).

  `embed(tokens)`: int32 [B, T] -> float [B, T, D] token embeddings only (no positions:
    the soft prompt is concatenated in this space, before positions are added).
  `score_classes(embeddings, mask, class_tokens, class_mask, prompt_length)`: rank
    classification. embeddings [B, T, D] (the first `prompt_length` positions are the
    soft prompt), mask [B, T] (1 = real token),
    class_tokens int32 [C, L] and class_mask [C, L] (the verbalizers, encoded by the
    bundle's `encode_classes`) -> float32 [B, C]; higher means more likely. Encoders
    return a scaled similarity, decoders the log-likelihood of each verbalizer.
  `hidden_size`: D.
  `sentence_embeddings(tokens, mask)` (optional): int32 [B, T] -> float32 [B, D], the
    frozen network's unit-norm embedding of each text, no prompt (`class_vote_embedding`).
    MiniLM's is the one all-MiniLM-L6-v2 was trained to give; T5 and LLaMA mean-pool their
    last hidden states over the real tokens (Sentence-T5's "mean" and the usual decoder
    baseline), which were never trained for similarity.
  """

  hidden_size: int

  def embed(self, tokens: jax.Array) -> jax.Array: ...

  def score_classes(self, embeddings: jax.Array, mask: jax.Array, class_tokens: jax.Array,
                    class_mask: jax.Array, prompt_length: int = 0) -> jax.Array: ...


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """[B, T, D] -> [B, D]: the mean over the positions where mask [B, T] is set."""
  weights = mask.astype(jnp.float32)[..., None]
  return (hidden.astype(jnp.float32) * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)


def l2_normalize(x: jax.Array) -> jax.Array:
  # Same floor as torch.nn.functional.normalize (norm >= 1e-12).
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), -1, keepdims=True), 1e-24))


@dataclasses.dataclass(frozen=True)
class PretrainedBackbone:
  """A backbone module with its frozen weights and its tokenizer conventions.

  Attributes:
    name: short name used in reports ("minilm", "t5_base", "smollm2", "tiny_bert").
    module: the Flax module fulfilling `Backbone`.
    load_params: returns the frozen weights as the module's "params" tree.
    inputs_feature: the `data.features.TextFeature` of the model's text input: its
      `seqio.Vocabulary` and special tokens (e.g. [CLS] ... [SEP], or text + EOS). The
      SeqIO tasks tokenize with it (gin `inputs_feature.backbone`).
    encode_classes: (label_strings) -> (tokens int32 [C, L], mask int32 [C, L]): the
      verbalizers in the form `score_classes` expects.
  """

  name: str
  module: Any
  load_params: Callable[[], Params]
  inputs_feature: Any
  encode_classes: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]

  @property
  def vocabulary(self) -> Any:
    """The `seqio.Vocabulary` of the model's text input."""
    return self.inputs_feature.vocabulary

  def encode_texts(self, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, mask) int32 [N, length], right padded: the tasks' tokenization of `texts`."""
    from gbair_jax.data import features  # pylint: disable=g-import-not-at-top  (TensorFlow)
    return features.encode_texts(self.inputs_feature, texts, length)


def random_params(module: Any, seed: int = 0, vocab_size: int = 8) -> Params:
  """Random weights for a tiny test backbone: initialises both contract methods."""
  tokens = jnp.zeros((1, 4), jnp.int32)

  def init_all(mdl):
    embeddings = mdl.embed(tokens)
    return mdl.score_classes(embeddings, jnp.ones((1, 4), jnp.int32),
                             jnp.ones((2, 3), jnp.int32), jnp.ones((2, 3), jnp.int32))

  del vocab_size
  return module.init(jax.random.PRNGKey(seed), method=init_all)["params"]


def pad_rows(rows: Sequence[Sequence[int]], length: int | None = None,
             pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Token id rows -> right-padded tokens and mask [len(rows), length] (int32).

  `length` None pads to the longest row; rows must already fit (callers truncate, since
  where to cut, e.g. keeping [SEP] or EOS, depends on the model).
  """
  length = max((len(row) for row in rows), default=0) if length is None else length
  tokens = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
    mask[i, :len(row)] = 1
  return tokens, mask
