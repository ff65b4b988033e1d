"""T5 backbone tests: T5X parameter layout, relative position buckets, rank classification
against a plain numpy T5 written from the paper's equations, and the classifier contract."""
import dataclasses

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbair_jax.errors import UserError
from gbair_jax.models import backbone as backbone_lib
from gbair_jax.models import classifier as classifier_lib
from gbair_jax.models import t5

LABELS = ["insult", "not insult", "ok"]


@pytest.fixture(scope="module")
def tiny():
  bundle = t5.tiny_t5(seed=3)
  return bundle, bundle.load_params()


def test_param_tree_has_t5x_names_and_2d_kernels(tiny):
  bundle, params = tiny
  flat = {"/".join(k): v.shape for k, v in flax.traverse_util.flatten_dict(params).items()}
  cfg = t5.TINY_CONFIG
  inner = cfg.num_heads * cfg.head_dim
  expected = {
      "token_embedder/embedding": (cfg.vocab_size, cfg.emb_dim),
      "encoder/relpos_bias/rel_embedding": (cfg.num_heads, cfg.num_buckets),
      "encoder/layers_0/pre_attention_layer_norm/scale": (cfg.emb_dim,),
      "encoder/layers_0/attention/query/kernel": (cfg.emb_dim, inner),
      "encoder/layers_0/attention/out/kernel": (inner, cfg.emb_dim),
      "encoder/layers_1/mlp/wi_0/kernel": (cfg.emb_dim, cfg.mlp_dim),
      "encoder/layers_1/mlp/wi_1/kernel": (cfg.emb_dim, cfg.mlp_dim),
      "encoder/layers_1/mlp/wo/kernel": (cfg.mlp_dim, cfg.emb_dim),
      "encoder/encoder_norm/scale": (cfg.emb_dim,),
      "decoder/relpos_bias/rel_embedding": (cfg.num_heads, cfg.num_buckets),
      "decoder/layers_1/pre_self_attention_layer_norm/scale": (cfg.emb_dim,),
      "decoder/layers_1/self_attention/key/kernel": (cfg.emb_dim, inner),
      "decoder/layers_1/pre_cross_attention_layer_norm/scale": (cfg.emb_dim,),
      "decoder/layers_1/encoder_decoder_attention/value/kernel": (cfg.emb_dim, inner),
      "decoder/layers_1/pre_mlp_layer_norm/scale": (cfg.emb_dim,),
      "decoder/decoder_norm/scale": (cfg.emb_dim,),
      "decoder/logits_dense/kernel": (cfg.emb_dim, cfg.vocab_size),
  }
  for name, shape in expected.items():
    assert flat.get(name) == shape, name
  # Per layer: 4 attention kernels (x2 in the decoder), 3 MLP kernels, 2 (or 3) norms.
  per_encoder_layer, per_decoder_layer = 4 + 3 + 2, 8 + 3 + 3
  assert len(flat) == (1 + 2 + 2 + 1 + cfg.num_encoder_layers * per_encoder_layer
                       + cfg.num_decoder_layers * per_decoder_layer)
  assert not any("bias" in name.split("/")[-1] for name in flat)  # T5 has no biases
  assert bundle.module.hidden_size == cfg.emb_dim


def test_relative_position_buckets_follow_t5():
  # Bidirectional, 32 buckets: keys before the query use 0-15, after it 16-31; distances
  # below 8 are exact, then log-spaced up to max_distance 128.
  enc = t5.relative_position_buckets(300, 300, bidirectional=True)
  query = 150
  assert enc[query, query] == 0
  assert enc[query, query - 1] == 1 and enc[query, query + 1] == 17
  assert enc[query, query - 7] == 7 and enc[query, query + 7] == 23
  assert enc[query, query - 20] == 10  # 8 + floor(log(20/8) / log(16) * 8)
  assert enc[query, query - 140] == 15 and enc[query, query + 140] == 31
  # Causal: the future is bucket 0; 16 exact buckets then log-spaced.
  dec = t5.relative_position_buckets(300, 300, bidirectional=False)
  assert dec[query, query + 5] == 0
  assert dec[query, query - 15] == 15
  assert dec[query, query - 20] == 17  # 16 + floor(log(20/16) / log(8) * 16)
  assert dec[query, 0] == 31


# ---------------------------------------------------------------------------------------
# A plain numpy T5 1.1, one unpadded sequence at a time.
# ---------------------------------------------------------------------------------------


def _rms(x, scale):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _attention(p, xq, xkv, bias, heads):
  split = lambda x: x.reshape(x.shape[0], heads, -1)
  q, k, v = (split(xin @ p[name]["kernel"]) for name, xin in
             (("query", xq), ("key", xkv), ("value", xkv)))
  logits = np.einsum("qhd,khd->hqk", q, k) + bias  # no 1/sqrt(d): folded into the init
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("hqk,khd->qhd", weights, v).reshape(xq.shape[0], -1) @ p["out"]["kernel"]


def _mlp(p, x):
  return (_gelu_tanh(x @ p["wi_0"]["kernel"]) * (x @ p["wi_1"]["kernel"])) @ p["wo"]["kernel"]


def _numpy_log_likelihood(params, cfg, embeddings, targets):
  """log p(targets | embeddings) for one example and one verbalizer, no padding anywhere."""
  enc = params["encoder"]
  length = embeddings.shape[0]
  x = embeddings
  bias = enc["relpos_bias"]["rel_embedding"][:, t5.relative_position_buckets(length, length, True)]
  for i in range(cfg.num_encoder_layers):
    layer = enc[f"layers_{i}"]
    x = x + _attention(layer["attention"], _rms(x, layer["pre_attention_layer_norm"]["scale"]),
                       _rms(x, layer["pre_attention_layer_norm"]["scale"]), bias, cfg.num_heads)
    x = x + _mlp(layer["mlp"], _rms(x, layer["pre_mlp_layer_norm"]["scale"]))
  encoded = _rms(x, enc["encoder_norm"]["scale"])

  dec = params["decoder"]
  inputs = np.concatenate([[0], targets[:-1]])
  steps = len(targets)
  causal = np.where(np.tril(np.ones((steps, steps))) > 0, 0.0, -1e10)
  buckets = t5.relative_position_buckets(steps, steps, False)
  self_bias = dec["relpos_bias"]["rel_embedding"][:, buckets]
  y = params["token_embedder"]["embedding"][inputs]
  for i in range(cfg.num_decoder_layers):
    layer = dec[f"layers_{i}"]
    h = _rms(y, layer["pre_self_attention_layer_norm"]["scale"])
    y = y + _attention(layer["self_attention"], h, h, self_bias + causal, cfg.num_heads)
    h = _rms(y, layer["pre_cross_attention_layer_norm"]["scale"])
    y = y + _attention(layer["encoder_decoder_attention"], h, encoded, 0.0, cfg.num_heads)
    y = y + _mlp(layer["mlp"], _rms(y, layer["pre_mlp_layer_norm"]["scale"]))
  logits = _rms(y, dec["decoder_norm"]["scale"]) @ dec["logits_dense"]["kernel"]
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return float(sum(log_probs[i, t] for i, t in enumerate(targets)))


def test_score_classes_equals_a_per_example_per_class_loop(tiny):
  bundle, params = tiny
  np_params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  tokens, mask = bundle.encode_texts(["this is a test", "what", "the cat sat on the mat"], 12)
  class_tokens, class_mask = bundle.encode_classes(LABELS)
  assert len(set(class_mask.sum(1))) > 1  # verbalizers of different lengths: padding is exercised
  prompt = jax.random.normal(jax.random.PRNGKey(1), (3, t5.TINY_CONFIG.emb_dim))

  def score(prompt, tokens, mask):
    embeddings = bundle.module.apply({"params": params}, tokens, method="embed")
    embeddings = jnp.concatenate([jnp.broadcast_to(prompt, (tokens.shape[0],) + prompt.shape),
                                  embeddings], axis=1)
    mask = jnp.concatenate([jnp.ones((tokens.shape[0], prompt.shape[0]), jnp.int32), mask], axis=1)
    return bundle.module.apply({"params": params}, embeddings, mask, class_tokens, class_mask,
                               method="score_classes")

  scores = np.asarray(jax.jit(score)(prompt, tokens, mask))
  assert scores.shape == (3, len(LABELS)) and scores.dtype == np.float32

  table = np_params["token_embedder"]["embedding"]
  for b in range(tokens.shape[0]):
    real = tokens[b, :mask[b].sum()]
    embeddings = np.concatenate([np.asarray(prompt, np.float64), table[real]])
    for c in range(len(LABELS)):
      targets = class_tokens[c, :class_mask[c].sum()]
      expected = _numpy_log_likelihood(np_params, t5.TINY_CONFIG, embeddings, targets)
      # float32 rounding is ~4e-6 here; the exact-erf GELU instead of T5's tanh one is 5e-5+.
      np.testing.assert_allclose(scores[b, c], expected, rtol=1e-6, atol=3e-5)


def test_t5x_style_forward_agrees_with_score_classes(tiny):
  bundle, params = tiny
  tokens, _ = bundle.encode_texts(["this is a test", "what"], 8)
  targets, target_mask = bundle.encode_classes(["not insult"])
  module = bundle.module

  def both(tokens):
    logits = module.apply({"params": params}, tokens, t5.shift_right(targets[0])[None].repeat(2, 0),
                          targets.repeat(2, 0))
    from_logits = t5.sequence_log_likelihood(logits, targets.repeat(2, 0), target_mask.repeat(2, 0))
    embeddings = module.apply({"params": params}, tokens, method="embed")
    scores = module.apply({"params": params}, embeddings, (tokens > 0).astype(jnp.int32), targets,
                          target_mask, method="score_classes")
    return from_logits, scores[:, 0]

  from_logits, scores = jax.jit(both)(tokens)
  np.testing.assert_allclose(from_logits, scores, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(scores) < 0)


def test_tiny_t5_runs_the_classifier_contract(tiny):
  bundle, params = tiny
  spec = classifier_lib.build_classifier(bundle, ["insult", "not insult"], prompt_length=4)
  tokens, mask = bundle.encode_texts(["you are a test", "this is", "cat"], 10)
  prompt = spec.initial_prompt(jax.random.PRNGKey(0), params)
  assert prompt.shape == (4, t5.TINY_CONFIG.emb_dim)
  logits = jax.jit(spec.logits)(prompt, params, tokens, mask)
  assert logits.shape == (3, 2) and bool(jnp.all(jnp.isfinite(logits)))

  batch = {"tokens": tokens, "mask": mask, "label": np.array([0, 1, 1])}
  per_example_grads = jax.jit(jax.grad(
      lambda p, batch: spec.example_losses(prompt, params, batch, p).sum()))
  shared_grad = jax.jit(jax.grad(lambda p, batch: spec.example_losses(p, params, batch).sum()))
  grads = per_example_grads(jnp.broadcast_to(prompt, (3,) + prompt.shape), batch)
  assert grads.shape == (3, 4, t5.TINY_CONFIG.emb_dim)
  # Each example's prompt gradient is its own: the same as from a batch of one.
  for b in range(3):
    alone = shared_grad(prompt, {k: v[b:b + 1] for k, v in batch.items()})
    assert float(jnp.abs(alone).max()) > 0
    np.testing.assert_allclose(grads[b], alone, rtol=1e-3, atol=1e-4)


def test_encoding_appends_eos_and_pads_with_zero(tiny):
  bundle, _ = tiny
  tokens, mask = bundle.encode_texts(["this is a test", "the cat sat on the mat"], 6)
  assert tokens.dtype == np.int32 and tokens.shape == (2, 6)
  first = list(bundle.vocabulary.encode("this is a test"))
  assert len(first) == 9
  assert list(tokens[0]) == first[:5] + [t5.EOS_ID]  # truncated, EOS kept
  assert tokens[1, -1] == t5.EOS_ID
  short, short_mask = bundle.encode_texts(["what"], 8)
  ids = list(bundle.vocabulary.encode("what"))
  assert list(short[0]) == ids + [t5.EOS_ID] + [0] * (8 - len(ids) - 1)
  assert list(short_mask[0]) == [1] * (len(ids) + 1) + [0] * (8 - len(ids) - 1)
  classes, class_mask = bundle.encode_classes(["ok", "not insult"])
  for row, row_mask, label in zip(classes, class_mask, ["ok", "not insult"]):
    ids = list(bundle.vocabulary.encode(label)) + [t5.EOS_ID]
    assert list(row[:row_mask.sum()]) == ids and not row[row_mask.sum():].any()


def test_bfloat16_activations_and_remat_stay_close(tiny):
  _, params = tiny
  embeddings = jax.random.normal(jax.random.PRNGKey(2), (2, 7, t5.TINY_CONFIG.emb_dim))
  mask = jnp.array([[1] * 7, [1] * 5 + [0] * 2])
  class_tokens, class_mask = jnp.array([[5, 6, 1], [7, 1, 0]]), jnp.array([[1, 1, 1], [1, 1, 0]])

  def run(config, with_grad):
    module = t5.T5Backbone(config)
    fn = lambda e: module.apply({"params": params}, e, mask, class_tokens, class_mask,
                                method="score_classes")
    if not with_grad:
      return jax.jit(fn)(embeddings)
    return jax.jit(lambda e: (fn(e), jax.grad(lambda x: fn(x).sum())(e)))(embeddings)

  # One layer each way keeps the three compilations cheap; layers_1 weights go unused.
  shallow = dataclasses.replace(t5.TINY_CONFIG, num_encoder_layers=1, num_decoder_layers=1)
  reference, reference_grad = run(shallow, True)
  low = run(dataclasses.replace(shallow, dtype="bfloat16"), False)
  assert low.dtype == jnp.float32
  np.testing.assert_allclose(low, reference, rtol=0.05, atol=0.3)
  remat, remat_grad = run(dataclasses.replace(shallow, remat=True), True)
  np.testing.assert_allclose(remat, reference, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(remat_grad, reference_grad, rtol=1e-4, atol=1e-6)


def test_t5_without_checkpoint_path_fails_with_its_gin_name():
  bundle = t5.t5(vocabulary_path=t5.seqio_test_vocabulary_path(), config=t5.TINY_CONFIG)
  with pytest.raises(UserError, match="t5.checkpoint_path"):
    bundle.load_params()


def test_unreadable_vocabulary_fails_with_its_gin_name(tmp_path):
  with pytest.raises(UserError, match="t5.vocabulary_path"):
    t5.t5(vocabulary_path=str(tmp_path / "missing.model"))


def test_random_params_shapes_match_abstract_params(tiny):
  bundle, params = tiny
  abstract = t5.abstract_params(bundle.module)
  assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(lambda a: a.shape, params)
  again = backbone_lib.random_params(bundle.module, seed=3)
  np.testing.assert_array_equal(again["decoder"]["logits_dense"]["kernel"],
                                params["decoder"]["logits_dense"]["kernel"])  # seeded


def test_t5_1_0_options_change_the_tree_as_t5x_does():
  config = dataclasses.replace(t5.TINY_CONFIG, mlp_activations=("relu",), logits_via_embedding=True)
  names = {"/".join(k) for k in flax.traverse_util.flatten_dict(
      t5.abstract_params(t5.T5Backbone(config)))}
  assert "encoder/layers_0/mlp/wi/kernel" in names and "encoder/layers_0/mlp/wi_0/kernel" not in names
  assert not any("logits_dense" in name for name in names)  # tied to token_embedder
