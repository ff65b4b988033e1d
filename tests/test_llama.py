"""Tiny random LLaMA decoder: classifier contract, right padding, rotary layouts, loaders.

Everything here is random and written by the tests (no network, no shipped weights), so
it runs in seconds; the real SmolLM2 checks live in test_llama_smollm2.py.
"""
import dataclasses
import json
import pathlib
import re

import gguf
import gin
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
import tokenizers
from safetensors.numpy import save_file

from gbair_jax.errors import UserError
from gbair_jax.models import llama, llama_weights
from gbair_jax.data.bpe_vocabulary import BpeVocabulary, bytes_to_unicode
from gbair_jax.models.classifier import build_classifier

GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin" / "models"

LABELS = ["insult", "not insult", "ok"]  # three verbalizers of different token lengths
TEXTS = ["you are dumb", "hi", "what a lovely day it is today", "ok then"]


@pytest.fixture(scope="module")
def tiny():
  backbone = llama.tiny_llama()
  return backbone, backbone.load_params()


def _numpy(tree):
  return jax.tree.map(np.asarray, tree)


# ---- tokenizer ---------------------------------------------------------------------------------

def test_byte_level_vocabulary_round_trips_unicode_and_spaces():
  vocabulary = BpeVocabulary.byte_level()
  text = "  Héllo,\tworld!\n\n日本語 🤗  x "
  ids = vocabulary.encode(text)
  assert len(ids) == len(text.encode("utf-8"))  # one id per byte: no merges
  assert vocabulary.decode(ids) == text
  assert vocabulary.encode("A") == [3 + ord("A")]
  tf_ids = vocabulary.encode_tf(tf.constant(text)).numpy().tolist()
  assert tf_ids == ids
  assert vocabulary.decode_tf(tf.constant([ids, ids])).numpy().tolist() == [text.encode()] * 2


def test_merges_and_special_tokens_are_applied():
  alphabet = [bytes_to_unicode()[b] for b in range(256)]
  tokens = ["<|endoftext|>"] + alphabet + ["h" + "e", "Ġ" + "w"]
  vocabulary = BpeVocabulary.from_tokens_and_merges(tokens, ["h e", "Ġ w"], special_ids=[0],
                                                    eos_id=0)
  assert vocabulary.encode("he w") == [257, 258]
  assert vocabulary.encode("x<|endoftext|>") == [1 + alphabet.index("x"), 0]
  assert vocabulary.decode(vocabulary.encode("he w")) == "he w"
  assert vocabulary == BpeVocabulary.from_tokens_and_merges(tokens, ["h e", "Ġ w"],
                                                            special_ids=[0], eos_id=0)
  assert vocabulary != BpeVocabulary.byte_level()


def test_encode_texts_right_pads_and_truncates(tiny):
  backbone, _ = tiny
  tokens, mask = backbone.encode_texts(["ab", "abcdef"], 4)
  assert tokens.shape == mask.shape == (2, 4)
  assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
  assert tokens[0, :2].tolist() == [3 + ord("a"), 3 + ord("b")]
  class_tokens, class_mask = backbone.encode_classes(["no", " yes"])
  # A leading space is added once: the verbalizer continues the text as a new word.
  assert class_tokens[0, :3].tolist() == [3 + ord(" "), 3 + ord("n"), 3 + ord("o")]
  assert class_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
  with pytest.raises(UserError, match="context"):
    backbone.encode_texts(["ab"], backbone.module.config.max_length + 1)


# ---- the classifier contract -------------------------------------------------------------------

def test_tiny_llama_runs_the_classifier_contract(tiny):
  backbone, params = tiny
  spec = build_classifier(backbone, LABELS, prompt_length=4)
  prompt = spec.initial_prompt(jax.random.PRNGKey(0), params)
  assert prompt.shape == (4, backbone.module.hidden_size)
  tokens, mask = backbone.encode_texts(TEXTS, 16)
  logits_fn = jax.jit(spec.logits)
  logits = logits_fn(prompt, params, tokens, mask)
  assert logits.shape == (len(TEXTS), len(LABELS))
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits)) and np.all(logits < 0)  # summed log-probabilities
  batch = {"tokens": tokens, "mask": mask, "label": np.array([0, 1, 2, 0])}

  def loss(prompt, params, batch):  # arrays as arguments: closed-over ones become constants
    return spec.example_losses(prompt, params, batch).mean()

  step = jax.jit(jax.value_and_grad(loss))
  value, grad = step(prompt, params, batch)
  assert np.isfinite(value) and grad.shape == prompt.shape
  # The prompt gradient is the loss's slope: a central difference along it agrees.
  direction = grad / jnp.linalg.norm(grad)
  eps = 1e-2
  slope = (step(prompt + eps * direction, params, batch)[0]
           - step(prompt - eps * direction, params, batch)[0]) / (2 * eps)
  np.testing.assert_allclose(slope, jnp.linalg.norm(grad), rtol=2e-2)

  # bfloat16 compute (what tiny_llama(dtype="bfloat16").load_params() returns: cast weights).
  bf16 = llama.tiny_llama(dtype="bfloat16")
  assert bf16.module.config.compute_dtype == jnp.bfloat16
  bf16_params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  spec16 = build_classifier(bf16, LABELS, prompt_length=4)
  logits16 = jax.jit(spec16.logits)(prompt, bf16_params, tokens, mask)
  assert logits16.dtype == jnp.float32
  np.testing.assert_allclose(logits16, logits, rtol=0.1, atol=0.5)
  assert not np.array_equal(logits16, logits)


def test_gin_files_select_the_llama_backbones(tiny):
  backbone, _ = tiny
  gin.clear_config()
  try:
    gin.parse_config_file(str(GIN_DIR / "smollm2.gin"))
    assert gin.query_parameter("%BACKBONE").selector == "smollm2"
    assert gin.query_parameter("smollm2.dtype") == "float32"
    gin.clear_config()
    gin.parse_config_file(str(GIN_DIR / "tiny_llama.gin"))
    spec = build_classifier(label_names=LABELS)
    assert spec.backbone.name == "tiny_llama"
    assert spec.backbone.module.config == backbone.module.config  # gin restates the defaults
  finally:
    gin.clear_config()


def _reference_scores(module, params, prompt, tokens, mask, class_tokens, class_mask):
  """Log-likelihoods from the plain causal LM on each unpadded text + verbalizer.

  Each (example, class) sequence is written from position 0 with no padding mask; rows are
  batched by filling their tails with arbitrary tokens, which causality keeps from
  influencing the positions read.
  """
  pairs = [(row, c) for row in range(tokens.shape[0]) for c in range(class_tokens.shape[0])]
  ids = np.full((len(pairs), 32), 7, np.int32)  # fixed width: one compilation
  for index, (row, c) in enumerate(pairs):
    sequence = np.concatenate([tokens[row, :mask[row].sum()],
                               class_tokens[c, :class_mask[c].sum()]])
    ids[index, :len(sequence)] = sequence

  @jax.jit
  def log_probs(params, prompt, ids):
    def run(mdl):
      embeddings = jnp.concatenate([jnp.broadcast_to(prompt, (len(ids),) + prompt.shape),
                                    mdl.embed(ids)], axis=1)
      return mdl.sequence_logits(embeddings, jnp.ones(embeddings.shape[:2], jnp.int32))
    return jax.nn.log_softmax(module.apply({"params": params}, method=run), axis=-1)

  all_log_probs = np.asarray(log_probs(params, prompt, ids))
  scores = np.zeros((tokens.shape[0], class_tokens.shape[0]))
  for index, (row, c) in enumerate(pairs):
    first = prompt.shape[0] + int(mask[row].sum()) - 1  # predicts the first class token
    scores[row, c] = sum(all_log_probs[index, first + j, class_tokens[c, j]]
                         for j in range(int(class_mask[c].sum())))
  return scores


def test_right_padded_scores_equal_unpadded_log_likelihoods(tiny):
  backbone, params = tiny
  module = backbone.module
  prompt = jax.random.normal(jax.random.PRNGKey(1), (3, module.hidden_size))
  tokens, mask = backbone.encode_texts(TEXTS, 20)
  class_tokens, class_mask = backbone.encode_classes(LABELS)
  assert len(set(class_mask.sum(1).tolist())) == 3 and mask.sum(1).min() < 20

  @jax.jit
  def scores(params, prompt, full_mask, class_tokens, class_mask):
    def run(mdl):
      embeddings = jnp.concatenate([jnp.broadcast_to(prompt, (len(TEXTS),) + prompt.shape),
                                    mdl.embed(tokens)], axis=1)
      return mdl.score_classes(embeddings, full_mask, class_tokens, class_mask)
    return module.apply({"params": params}, method=run)

  scores_for = lambda *args: scores(params, prompt, *args)

  full_mask = np.concatenate([np.ones((len(TEXTS), 3), np.int32), mask], 1)
  expected = _reference_scores(module, params, prompt, tokens, mask, class_tokens, class_mask)
  np.testing.assert_allclose(scores_for(full_mask, class_tokens, class_mask), expected,
                             rtol=1e-4, atol=1e-4)
  # The check can fail: treating the padding as text moves the scores well past tolerance.
  padded_as_text = scores_for(np.ones_like(full_mask), class_tokens, class_mask)
  assert np.abs(np.asarray(padded_as_text) - expected).max() > 1e-2
  # One-token verbalizers take the prefix-only path (no continuation pass).
  first_tokens, first_mask = class_tokens[:, :1], class_mask[:, :1]
  np.testing.assert_allclose(
      scores_for(full_mask, first_tokens, first_mask),
      _reference_scores(module, params, prompt, tokens, mask, first_tokens, first_mask),
      rtol=1e-4, atol=1e-4)


# ---- rotary layout and weight loaders -----------------------------------------------------------

def test_gguf_permutation_is_inverted():
  weight = np.arange(4 * 8 * 3, dtype=np.float32).reshape(4 * 8, 3)  # 4 heads of dim 8
  permuted = llama_weights.permute_for_gguf(weight, 4)
  assert not np.array_equal(permuted, weight)
  # Head 0 rows (0..7) become interleaved halves: 0, 4, 1, 5, 2, 6, 3, 7.
  np.testing.assert_array_equal(permuted[:8, 0], weight[[0, 4, 1, 5, 2, 6, 3, 7], 0])
  np.testing.assert_array_equal(llama_weights.unpermute_from_gguf(permuted, 4), weight)


def _reference_llama_cpp_logits(tensors, config, ids):
  """Independent numpy forward in llama.cpp's layout: GGUF-permuted Q/K with RoPE on
  adjacent pairs (2i, 2i+1), and explicitly repeated KV heads."""
  rms = lambda x, w: x / np.sqrt(np.mean(x * x, -1, keepdims=True) + config.norm_eps) * w
  hd, heads, kv_heads = config.head_dim, config.num_heads, config.num_kv_heads
  length = len(ids)
  x = tensors["model.embed_tokens.weight"][ids].astype(np.float64)
  angles = np.arange(length)[:, None] * config.rope_theta ** (-np.arange(0, hd, 2) / hd)

  def rope_pairs(v):  # v [T, H, hd]
    even, odd = v[..., 0::2], v[..., 1::2]
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    out = np.empty_like(v)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out

  for i in range(config.num_layers):
    w = lambda name: tensors[f"model.layers.{i}.{name}.weight"].astype(np.float64)
    h = rms(x, w("input_layernorm"))
    q = h @ llama_weights.permute_for_gguf(w("self_attn.q_proj"), heads).T
    k = h @ llama_weights.permute_for_gguf(w("self_attn.k_proj"), kv_heads).T
    v = h @ w("self_attn.v_proj").T
    q = rope_pairs(q.reshape(length, heads, hd))
    k = np.repeat(rope_pairs(k.reshape(length, kv_heads, hd)), heads // kv_heads, axis=1)
    v = np.repeat(v.reshape(length, kv_heads, hd), heads // kv_heads, axis=1)
    scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
    scores = np.where(np.tril(np.ones((length, length), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attended = np.einsum("hts,shd->thd", probs, v).reshape(length, heads * hd)
    x = x + attended @ w("self_attn.o_proj").T
    h = rms(x, w("post_attention_layernorm"))
    gate = h @ w("mlp.gate_proj").T
    x = x + ((gate / (1 + np.exp(-gate))) * (h @ w("mlp.up_proj").T)) @ w("mlp.down_proj").T
  x = rms(x, tensors["model.norm.weight"])
  head = tensors.get("lm_head.weight", tensors["model.embed_tokens.weight"])
  return x @ head.T


@pytest.fixture(scope="module")
def untied():
  """A tiny untied model (lm_head present), GQA 4 query / 2 KV heads."""
  backbone = llama.tiny_llama(tie_embeddings=False, seed=3)
  return backbone, _numpy(backbone.load_params())


def _write_hf_directory(path, backbone, params, dtype=np.float32):
  cfg = backbone.module.config
  tensors = llama_weights.hf_tensors_from_params(params, cfg.num_layers)
  save_file({name: np.ascontiguousarray(t.astype(dtype)) for name, t in tensors.items()},
            str(path / "model.safetensors"))
  config = {"model_type": "llama", "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
            "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
            "tie_word_embeddings": cfg.tie_embeddings, "max_position_embeddings": cfg.max_length,
            "bos_token_id": 0, "eos_token_id": 0}
  (path / "config.json").write_text(json.dumps(config))
  backbone.vocabulary.tokenizer.save(str(path / "tokenizer.json"))
  return tensors


def test_model_matches_independent_llama_cpp_style_reference(untied):
  backbone, params = untied
  tensors = llama_weights.hf_tensors_from_params(params, backbone.module.config.num_layers)
  ids = np.array(backbone.vocabulary.encode("rotary check, twelve+"))
  logits = jax.jit(backbone.module.apply)({"params": params}, jnp.asarray(ids)[None])[0]
  expected = _reference_llama_cpp_logits(tensors, backbone.module.config, ids)
  np.testing.assert_allclose(logits, expected, rtol=2e-4, atol=2e-4)


def test_hf_safetensors_round_trip(untied, tmp_path):
  backbone, params = untied
  _write_hf_directory(tmp_path, backbone, params)
  loaded = llama.hf_llama(str(tmp_path))
  assert loaded.module.config == backbone.module.config
  assert loaded.vocabulary.encode("héllo") == backbone.vocabulary.encode("héllo")
  assert not loaded.vocabulary.add_bos  # the byte-level tokenizer.json templates no BOS
  loaded_params = loaded.load_params()
  assert jax.tree.structure(loaded_params) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, _numpy(loaded_params), params)
  assert loaded.module == backbone.module  # same config and weights: the same model
  assert loaded.encode_texts(TEXTS, 10)[0].tolist() == backbone.encode_texts(TEXTS, 10)[0].tolist()


def test_hf_sharded_checkpoint(untied, tmp_path):
  backbone, params = untied
  tensors = _write_hf_directory(tmp_path, backbone, params)
  (tmp_path / "model.safetensors").unlink()
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[:5],
            "model-00002-of-00002.safetensors": names[5:]}
  for shard, shard_names in shards.items():
    save_file({n: tensors[n] for n in shard_names}, str(tmp_path / shard))
  weight_map = {n: shard for shard, shard_names in shards.items() for n in shard_names}
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  loaded = llama_weights.load_hf_params(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  (tmp_path / "model-00002-of-00002.safetensors").unlink()
  with pytest.raises(UserError, match="model-00002-of-00002.safetensors is missing"):
    llama_weights.load_hf_params(str(tmp_path))


def test_hf_bfloat16_checkpoint_bos_template_and_bad_config(untied, tmp_path):
  backbone, params = untied
  _write_hf_directory(tmp_path, llama.tiny_llama(tie_embeddings=False), params,
                     dtype=ml_dtypes.bfloat16)  # a fresh bundle: its tokenizer is edited below
  loaded = _numpy(llama.hf_llama(str(tmp_path)).load_params())
  kernel = params["layers_0"]["mlp"]["up"]["kernel"]
  np.testing.assert_allclose(loaded["layers_0"]["mlp"]["up"]["kernel"], kernel, rtol=1e-2,
                             atol=1e-2)
  assert not np.array_equal(loaded["layers_0"]["mlp"]["up"]["kernel"], kernel)
  # A tokenizer.json whose post-processor templates BOS in (as Llama 2/3's do) gets BOS.
  tokenizer = backbone.vocabulary.tokenizer
  tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
      single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)])
  tokenizer.save(str(tmp_path / "tokenizer.json"))
  tokens, _ = llama.hf_llama(str(tmp_path)).encode_texts(["hi"], 4)
  assert tokens[0, :3].tolist() == [0, 3 + ord("h"), 3 + ord("i")]
  config = json.loads((tmp_path / "config.json").read_text())
  config["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0}
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(UserError, match="rope_scaling"):
    llama.hf_llama(str(tmp_path))


def test_gguf_loader_matches_hf_loader(untied, tmp_path):
  """A GGUF written the way llama.cpp converts HF weights (Q/K permuted) loads back to the
  same parameters as the HF checkpoint, with its tokenizer metadata."""
  backbone, params = untied
  cfg = backbone.module.config
  tensors = llama_weights.hf_tensors_from_params(params, cfg.num_layers)
  to_gguf = {hf: g for g, hf in llama_weights._GGUF_TO_HF.items()}
  path = str(tmp_path / "tiny.gguf")
  writer = gguf.GGUFWriter(path, "llama")
  writer.add_block_count(cfg.num_layers)
  writer.add_embedding_length(cfg.hidden_size)
  writer.add_feed_forward_length(cfg.mlp_dim)
  writer.add_head_count(cfg.num_heads)
  writer.add_head_count_kv(cfg.num_kv_heads)
  writer.add_rope_freq_base(cfg.rope_theta)
  writer.add_layer_norm_rms_eps(cfg.norm_eps)
  writer.add_vocab_size(cfg.vocab_size)
  writer.add_context_length(cfg.max_length)
  tokenizer_vocab = backbone.vocabulary.tokenizer.get_vocab(with_added_tokens=True)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("default")
  writer.add_token_list(sorted(tokenizer_vocab, key=tokenizer_vocab.get))
  writer.add_token_merges([])
  writer.add_token_types([3, 3, 3] + [1] * 256)
  writer.add_eos_token_id(0)
  writer.add_bos_token_id(0)
  writer.add_add_bos_token(True)
  for name, tensor in tensors.items():
    layer = re.match(r"model\.layers\.(\d+)\.", name)
    generic = re.sub(r"^model\.layers\.\d+\.", "model.layers.{i}.", name)
    gguf_name = to_gguf[generic].format(i=layer.group(1) if layer else None)
    if name.endswith("q_proj.weight"):
      tensor = llama_weights.permute_for_gguf(tensor, cfg.num_heads)
    elif name.endswith("k_proj.weight"):
      tensor = llama_weights.permute_for_gguf(tensor, cfg.num_kv_heads)
    writer.add_tensor(gguf_name, np.ascontiguousarray(tensor, np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()

  loaded = llama.gguf_llama(path)
  # GGUF stores the epsilon as float32.
  assert loaded.module.config.norm_eps == pytest.approx(cfg.norm_eps)
  assert dataclasses.replace(loaded.module.config, norm_eps=cfg.norm_eps) == cfg
  assert loaded.vocabulary.add_bos
  tokens, mask = loaded.encode_texts(["hi"], 4)
  assert tokens[0, :3].tolist() == [0, 3 + ord("h"), 3 + ord("i")]  # BOS first, per metadata
  jax.tree.map(np.testing.assert_array_equal, _numpy(loaded.load_params()), params)
