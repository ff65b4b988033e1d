"""T5 1.1 / Flan-T5 encoder-decoder backbone in Flax, with T5X's parameter names.

Scores classes by the decoder's log-likelihood of each verbalizer (rank classification)
after the soft prompt has been prepended to the encoder input, as in prompt tuning.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from typing import Any, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from gbair_jax.errors import UserError
from gbair_jax.models import backbone as backbone_lib
from gbair_jax.models import t5_checkpoint

PAD_ID = 0
EOS_ID = 1
# The public T5 / T5 1.1 / Flan-T5 SentencePiece model (32000 pieces + 100 sentinels).
DEFAULT_VOCABULARY_PATH = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Config:
  """Dimensions of a T5 model, named as in T5X's `network.T5Config`.

  Configurable as in T5X (`T5Config.emb_dim = 4096`): gin/models/t5_base.gin binds every
  field, and each other size includes it and rebinds the few that differ.

  Attributes:
    vocab_size: rows of the embedding table (32128 for the public T5 vocabulary,
      32100 pieces rounded up to a multiple of 128).
    emb_dim: d_model.
    num_heads: attention heads.
    num_encoder_layers: encoder depth.
    num_decoder_layers: decoder depth.
    head_dim: d_kv, the size of each head.
    mlp_dim: d_ff.
    mlp_activations: ("gelu", "linear") is T5 1.1's gated GELU; ("relu",) is T5 1.0.
    logits_via_embedding: T5 1.0 ties the output layer to the embedding; 1.1 does not.
    num_buckets: relative position buckets.
    max_distance: distance beyond which relative positions share the last bucket.
    dtype: activation dtype ("float32", or "bfloat16" on TPU); parameters stay as stored.
    remat: recompute each layer's activations in the backward pass (saves memory on
      the prompt gradient of large models at the cost of a second forward pass).
  """

  vocab_size: int = 32128
  emb_dim: int = 768
  num_heads: int = 12
  num_encoder_layers: int = 12
  num_decoder_layers: int = 12
  head_dim: int = 64
  mlp_dim: int = 2048
  mlp_activations: tuple[str, ...] = ("gelu", "linear")
  logits_via_embedding: bool = False
  num_buckets: int = 32
  max_distance: int = 128
  dtype: str = "float32"
  remat: bool = False

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)


# The T5X initializers, so that random test models have realistic activation scales.
_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
_attention_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
_relpos_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


class Embed(nn.Module):
  """The shared token embedding table `embedding` [vocab, D].

  Ids outside the table embed to zeros, as with T5X's one-hot lookup, instead of the
  NaNs of a plain gather (a prompt initializer sampling ids past a small vocabulary
  would otherwise poison every score).
  """

  num_embeddings: int
  features: int
  dtype: Any = jnp.float32

  def setup(self):
    self.embedding = self.param("embedding", nn.initializers.normal(stddev=1.0),
                                (self.num_embeddings, self.features), jnp.float32)

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding, ids, axis=0, mode="fill", fill_value=0).astype(self.dtype)

  def attend(self, query: jax.Array) -> jax.Array:
    return jnp.dot(query, self.embedding.T.astype(query.dtype))


class RmsNorm(nn.Module):
  """T5's layer norm: scale by the root mean square, no mean subtraction, no bias."""

  dtype: Any = jnp.float32
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)  # The mean square overflows or rounds badly in bfloat16.
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return (y * scale).astype(self.dtype)


class Dense(nn.Module):
  """A bias-free projection whose kernel is stored 2-D [in, out], as T5X stores it.

  Multi-head projections reshape their output; keeping the stored kernel 2-D is what
  makes T5X checkpoints load as they are.
  """

  features: int
  dtype: Any = jnp.float32
  kernel_init: Any = _kernel_init

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))


class MultiHeadAttention(nn.Module):
  """T5 attention: no 1/sqrt(head_dim) logit scaling (T5X folds it into the query init).

  Queries may carry more leading axes than keys ([B, C, Lq, D] against [B, Lk, D]):
  the keys and values of the encoder are then projected once and broadcast over C.
  """

  num_heads: int
  head_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array, bias: jax.Array) -> jax.Array:
    """bias: added to the float32 logits, broadcastable to [..., heads, Lq, Lk]."""
    inner = self.num_heads * self.head_dim
    depth_scaling = np.sqrt(self.head_dim).astype(np.float32)
    query_init = lambda *args: _attention_init(*args) / depth_scaling
    project = functools.partial(Dense, inner, dtype=self.dtype, kernel_init=_attention_init)

    def split_heads(x):  # [..., L, H*d] -> [..., H, L, d]
      x = x.reshape(x.shape[:-1] + (self.num_heads, self.head_dim))
      return jnp.swapaxes(x, -2, -3)

    query = Dense(inner, dtype=self.dtype, kernel_init=query_init, name="query")(inputs_q)
    query = split_heads(query)
    key = split_heads(project(name="key")(inputs_kv))
    value = split_heads(project(name="value")(inputs_kv))
    # Keys from the encoder have fewer leading axes than tiled decoder queries: insert
    # singleton axes after the batch so matmul broadcasts them instead of copying.
    while key.ndim < query.ndim:
      key, value = key[:, None], value[:, None]

    logits = jnp.matmul(query, jnp.swapaxes(key, -1, -2), preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits + bias, axis=-1).astype(self.dtype)
    context = jnp.swapaxes(jnp.matmul(weights, value), -2, -3)  # [..., Lq, H, d]
    context = context.reshape(context.shape[:-2] + (inner,))
    return Dense(inputs_q.shape[-1], dtype=self.dtype, kernel_init=_attention_init,
                 name="out")(context)


def relative_position_buckets(query_length: int, key_length: int, bidirectional: bool,
                              num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
  """T5's bucket of every (query, key) pair: exact for short distances, log-spaced after.

  Encoder buckets are bidirectional (half the buckets for keys after the query); the
  causal decoder folds every future key into bucket 0, where the causal mask hides it.
  Computed in numpy: the lengths are static, so the buckets are a program constant.
  """
  relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
  distance = -relative
  buckets = np.zeros_like(distance)
  if bidirectional:
    num_buckets //= 2
    buckets += (distance < 0).astype(distance.dtype) * num_buckets
    distance = np.abs(distance)
  else:
    distance = np.maximum(distance, 0)
  max_exact = num_buckets // 2
  # The eps keeps log() finite at distance 0; those entries take the exact branch.
  log_ratio = np.log(distance.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
  large = max_exact + (log_ratio / np.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(np.int32)
  large = np.minimum(large, num_buckets - 1)
  return (buckets + np.where(distance < max_exact, distance, large)).astype(np.int32)


class RelativePositionBias(nn.Module):
  """One learned scalar per (head, bucket), shared by all layers of a stack."""

  num_heads: int
  num_buckets: int
  max_distance: int

  @nn.compact
  def __call__(self, query_length: int, key_length: int, bidirectional: bool) -> jax.Array:
    """Returns float32 [heads, query_length, key_length]."""
    table = self.param("rel_embedding", _relpos_init, (self.num_heads, self.num_buckets),
                       jnp.float32)
    buckets = relative_position_buckets(query_length, key_length, bidirectional,
                                        self.num_buckets, self.max_distance)
    return table[:, buckets]


class MlpBlock(nn.Module):
  """Gated feed-forward: product of activations of `wi_0`, `wi_1` (or one `wi`), then `wo`."""

  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    hidden = None
    for index, activation in enumerate(cfg.mlp_activations):
      name = "wi" if len(cfg.mlp_activations) == 1 else f"wi_{index}"
      h = Dense(cfg.mlp_dim, dtype=cfg.compute_dtype, name=name)(x)
      # T5X maps activation names onto flax.linen; nn.gelu is the tanh approximation
      # that T5 1.1 was trained with.
      h = h if activation == "linear" else getattr(nn, activation)(h)
      hidden = h if hidden is None else hidden * h
    return Dense(x.shape[-1], dtype=cfg.compute_dtype, name="wo")(hidden)


class EncoderLayer(nn.Module):
  """Pre-norm self-attention and MLP, each with a residual connection."""

  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
    cfg = self.config
    dtype = cfg.compute_dtype
    y = RmsNorm(dtype, name="pre_attention_layer_norm")(x)
    x = x + MultiHeadAttention(cfg.num_heads, cfg.head_dim, dtype, name="attention")(y, y, bias)
    y = RmsNorm(dtype, name="pre_mlp_layer_norm")(x)
    return x + MlpBlock(cfg, name="mlp")(y)


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention, cross-attention to the encoder, and MLP."""

  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, encoded: jax.Array, self_bias: jax.Array,
               cross_bias: jax.Array) -> jax.Array:
    cfg = self.config
    dtype = cfg.compute_dtype
    attention = functools.partial(MultiHeadAttention, cfg.num_heads, cfg.head_dim, dtype)
    y = RmsNorm(dtype, name="pre_self_attention_layer_norm")(x)
    x = x + attention(name="self_attention")(y, y, self_bias)
    y = RmsNorm(dtype, name="pre_cross_attention_layer_norm")(x)
    x = x + attention(name="encoder_decoder_attention")(y, encoded, cross_bias)
    y = RmsNorm(dtype, name="pre_mlp_layer_norm")(x)
    return x + MlpBlock(cfg, name="mlp")(y)


def _padding_bias(mask: jax.Array) -> jax.Array:
  """[..., Lk] 1/0 key mask -> additive float32 bias [..., 1, 1, Lk] (heads, queries)."""
  return jnp.where(mask[..., None, None, :] > 0, 0.0, backbone_lib.MASK_VALUE).astype(jnp.float32)


class Encoder(nn.Module):
  """A stack of encoder layers over input embeddings (prompt already prepended)."""

  config: T5Config

  @nn.compact
  def __call__(self, embeddings: jax.Array, mask: jax.Array) -> jax.Array:
    cfg = self.config
    length = embeddings.shape[-2]
    relpos = RelativePositionBias(cfg.num_heads, cfg.num_buckets, cfg.max_distance,
                                  name="relpos_bias")(length, length, True)
    bias = relpos[None] + _padding_bias(mask)  # [B, H, T, T]
    layer_cls = nn.remat(EncoderLayer) if cfg.remat else EncoderLayer
    x = embeddings.astype(cfg.compute_dtype)
    for index in range(cfg.num_encoder_layers):
      x = layer_cls(cfg, name=f"layers_{index}")(x, bias)
    return RmsNorm(cfg.compute_dtype, name="encoder_norm")(x)


class Decoder(nn.Module):
  """A causal stack attending to the encoder; returns float32 logits over the vocabulary.

  Decoder inputs [B, C, L] carry a candidate axis C (the verbalizers): the encoder
  output [B, T, D] is shared by all candidates of an example, never copied C times.
  """

  config: T5Config
  embedder: nn.Module

  @nn.compact
  def __call__(self, encoded: jax.Array, encoder_mask: jax.Array,
               decoder_input_tokens: jax.Array, decoder_mask: jax.Array) -> jax.Array:
    cfg = self.config
    length = decoder_input_tokens.shape[-1]
    relpos = RelativePositionBias(cfg.num_heads, cfg.num_buckets, cfg.max_distance,
                                  name="relpos_bias")(length, length, False)
    causal = np.tril(np.ones((length, length), bool))
    allowed = causal & (decoder_mask[..., None, None, :] > 0)  # [B, C, 1, L, L]
    self_bias = relpos + jnp.where(allowed, 0.0, backbone_lib.MASK_VALUE).astype(jnp.float32)
    cross_bias = _padding_bias(encoder_mask)  # [B, 1, 1, T]
    while cross_bias.ndim < self_bias.ndim:  # broadcast over the candidate axes
      cross_bias = cross_bias[:, None]

    layer_cls = nn.remat(DecoderLayer) if cfg.remat else DecoderLayer
    y = self.embedder(decoder_input_tokens).astype(cfg.compute_dtype)
    for index in range(cfg.num_decoder_layers):
      y = layer_cls(cfg, name=f"layers_{index}")(y, encoded, self_bias, cross_bias)
    y = RmsNorm(cfg.compute_dtype, name="decoder_norm")(y)
    if cfg.logits_via_embedding:
      # T5 1.0 ties the output layer to the embedding and rescales it.
      return self.embedder.attend(y.astype(jnp.float32)) / np.sqrt(y.shape[-1])
    # float32 logits, as T5X, for a stable softmax over 32k pieces.
    return Dense(cfg.vocab_size, dtype=jnp.float32, name="logits_dense")(y)


def shift_right(tokens: jax.Array) -> jax.Array:
  """Teacher-forcing decoder inputs: 0 (T5's start id, = pad) then the targets but last."""
  return jnp.pad(tokens, [(0, 0)] * (tokens.ndim - 1) + [(1, 0)])[..., :-1]


class T5Backbone(nn.Module):
  """T5 behind the `Backbone` contract; its "params" tree is the `target` of a T5X checkpoint.

  Top-level parameters: `token_embedder/embedding`, `encoder/...`, `decoder/...`.
  """

  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, dtype=cfg.compute_dtype)
    self.encoder = Encoder(cfg)
    # The decoder embeds its inputs with the shared table, which stays at the top level.
    self.decoder = Decoder(cfg, embedder=self.token_embedder)

  @property
  def hidden_size(self) -> int:
    return self.config.emb_dim

  def embed(self, tokens: jax.Array) -> jax.Array:
    """int32 [B, T] -> [B, T, D]; T5 has no absolute positions to add."""
    return self.token_embedder(tokens)

  def encode(self, embeddings: jax.Array, mask: jax.Array) -> jax.Array:
    return self.encoder(embeddings, mask)

  def sentence_embeddings(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """float32 [B, D]: the encoder's output mean-pooled over real tokens, unit norm."""
    return backbone_lib.l2_normalize(backbone_lib.mean_pool(self.encode(self.embed(tokens), mask),
                                                            mask))

  def score_classes(self, embeddings: jax.Array, mask: jax.Array, class_tokens: jax.Array,
                    class_mask: jax.Array, prompt_length: int = 0) -> jax.Array:
    """Summed log-likelihood of each verbalizer: float32 [B, C].

    `prompt_length` is unused: the decoder attends to every encoder output, prompt included.

    The encoder runs once per example; the decoder scores all C verbalizers of an
    example in one pass, teacher-forced on `shift_right(class_tokens)`.
    """
    encoded = self.encoder(embeddings, mask)
    batch = encoded.shape[0]
    targets = jnp.broadcast_to(class_tokens, (batch,) + class_tokens.shape)
    target_mask = jnp.broadcast_to(class_mask, (batch,) + class_mask.shape)
    logits = self.decoder(encoded, mask, shift_right(targets), target_mask)  # [B, C, L, V]
    return sequence_log_likelihood(logits, targets, target_mask)

  def __call__(self, encoder_input_tokens: jax.Array, decoder_input_tokens: jax.Array,
               decoder_target_tokens: jax.Array) -> jax.Array:
    """T5X's teacher-forced forward on token ids (no prompt): float32 logits [B, L, V]."""
    encoder_mask = (encoder_input_tokens > 0).astype(jnp.int32)
    encoded = self.encoder(self.embed(encoder_input_tokens), encoder_mask)
    logits = self.decoder(encoded, encoder_mask, decoder_input_tokens[:, None],
                          (decoder_target_tokens > 0)[:, None].astype(jnp.int32))
    return logits[:, 0]


def sequence_log_likelihood(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """Sum over the last axis of log p(target token), counting only mask == 1 positions."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token_log_probs = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)
  return jnp.sum(token_log_probs[..., 0] * mask.astype(jnp.float32), axis=-1)


# ---------------------------------------------------------------------------------------
# Tokenization and the PretrainedBackbone factories.
# ---------------------------------------------------------------------------------------


def _vocabulary(path: str, binding: str):
  # Imported here: seqio and TensorFlow cost ~8 s, paid only when a T5 is built.
  from gbair_jax.data.vocabularies import sentencepiece_vocabulary  # pylint: disable=g-import-not-at-top
  return sentencepiece_vocabulary(path, binding=binding)


def _encode_classes(vocabulary, label_strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Each label string + EOS, padded to the longest: the decoder targets to score."""
  rows = [list(vocabulary.encode(label)) + [EOS_ID] for label in label_strings]
  return backbone_lib.pad_rows(rows, pad_id=PAD_ID)


def _bundle(name: str, module: T5Backbone, load_params,
            vocabulary) -> backbone_lib.PretrainedBackbone:
  if vocabulary.vocab_size > module.config.vocab_size:
    raise UserError(f"{name}: the vocabulary has {vocabulary.vocab_size} pieces but the model "
                    f"embeds only vocab_size={module.config.vocab_size}")
  from gbair_jax.data.features import TextFeature  # pylint: disable=g-import-not-at-top
  # text + EOS, truncated to the length (EOS kept), right padded with the pad id.
  return backbone_lib.PretrainedBackbone(
      name=name, module=module, load_params=load_params,
      inputs_feature=TextFeature(vocabulary, add_eos=True),
      encode_classes=functools.partial(_encode_classes, vocabulary))


def abstract_params(module: T5Backbone) -> Any:
  """The shapes and dtypes of the module's params, computed without allocating them."""
  return jax.eval_shape(lambda: backbone_lib.random_params(module))


@gin.configurable
def t5(name: str = "t5",
       checkpoint_path: str | None = None,
       vocabulary_path: str = DEFAULT_VOCABULARY_PATH,
       step: int | None = None,
       config: T5Config | None = None,
       params_dtype: str | None = None) -> backbone_lib.PretrainedBackbone:
  """A T5X-checkpointed T5 (dimensions: `config`, T5Config's gin bindings) as a PretrainedBackbone.

  Args:
    name: short name for reports ("t5_base", "flan_t5_xl", ...).
    checkpoint_path: a T5X model dir (latest `checkpoint_<step>` is used), a step dir,
      or its `checkpoint` file; local, or gs:// where Google Cloud is reachable. Orbax
      and the older msgpack + TensorStore layouts both load; only `target` is read.
    vocabulary_path: the SentencePiece model (default: the public T5 vocabulary).
    step: checkpoint step when `checkpoint_path` is a model dir (None: latest).
    config: the model's dimensions, activation dtype and remat; None takes `T5Config()`
      with its gin bindings (T5 1.1 Base dimensions when nothing is bound).
    params_dtype: cast the loaded weights ("bfloat16" halves their memory); None keeps
      the checkpoint's dtype (float32 for T5X's public checkpoints).
  """
  config = T5Config() if config is None else config
  module = T5Backbone(config)

  def load_params():
    if not checkpoint_path:
      raise UserError("t5.checkpoint_path is not set: point it at a T5X checkpoint, e.g. "
                      "--gin.t5.checkpoint_path=\"'/ckpts/t5_1_1_base/checkpoint_1000000'\"")
    params = t5_checkpoint.load_t5x_params(checkpoint_path, step=step, dtype=params_dtype)
    t5_checkpoint.check_params_match(params, abstract_params(module),
                                     f"t5.checkpoint_path={checkpoint_path!r} (gin {name})")
    return params

  return _bundle(name, module, load_params,
                 _vocabulary(vocabulary_path, binding="t5.vocabulary_path"))


TINY_CONFIG = T5Config(vocab_size=32, emb_dim=16, num_heads=4, num_encoder_layers=2,
                       num_decoder_layers=2, head_dim=4, mlp_dim=32)


def seqio_test_vocabulary_path() -> str:
  """The 26-piece SentencePiece model shipped in the seqio wheel (pad 0, EOS 1, unk 2)."""
  spec = importlib.util.find_spec("seqio")
  return os.path.join(os.path.dirname(spec.origin), "test_data", "sentencepiece",
                      "sentencepiece.model")


@gin.configurable
def tiny_t5(seed: int = 0, dtype: str = "float32") -> backbone_lib.PretrainedBackbone:
  """A 2+2-layer, d=16 random T5 with a tiny local vocabulary, for tests and CPU smoke runs."""
  module = T5Backbone(dataclasses.replace(TINY_CONFIG, dtype=dtype))
  load_params = lambda: backbone_lib.random_params(module, seed=seed)
  return _bundle("tiny_t5", module, load_params,
                 _vocabulary(seqio_test_vocabulary_path(), binding="tiny_t5 vocabulary"))
