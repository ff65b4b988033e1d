"""Tests for the BERT/MiniLM backbone: numpy reference, known similarities, classifier wiring."""
import math
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from gbair_jax.errors import UserError
from gbair_jax.models import bert
from gbair_jax.models import minilm_weights
from gbair_jax.models.backbone import random_params
from gbair_jax.models.classifier import build_classifier


@pytest.fixture(scope="module")
def minilm():
  backbone = bert.minilm()
  return backbone, backbone.load_params()


# ---------------------------------------------------------------------------------------
# An independent float64 numpy BERT, straight from the Hugging Face tensor names.

_erf = np.vectorize(math.erf)


def _np_layer_norm(x, weight, bias, eps=1e-12):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * weight + bias


def _np_linear(x, hf, name):
  return x @ hf[f"{name}.weight"].T + hf[f"{name}.bias"]


def _np_bert(hf, word_embeddings, mask, heads=12, layers=6):
  """HF BertModel.forward on given word embeddings (token type 0), float64."""
  # float64 copies of the layer tensors only (the 30522-row word table is not needed).
  hf = {k: v.astype(np.float64) for k, v in hf.items() if "word_embeddings" not in k}
  batch, length, dim = word_embeddings.shape
  x = (word_embeddings + hf["embeddings.position_embeddings.weight"][:length]
       + hf["embeddings.token_type_embeddings.weight"][0])
  x = _np_layer_norm(x, hf["embeddings.LayerNorm.weight"], hf["embeddings.LayerNorm.bias"])
  head_dim = dim // heads
  bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9)
  split = lambda t: t.reshape(batch, length, heads, head_dim).transpose(0, 2, 1, 3)
  for i in range(layers):
    p = f"encoder.layer.{i}"
    q = split(_np_linear(x, hf, f"{p}.attention.self.query"))
    k = split(_np_linear(x, hf, f"{p}.attention.self.key"))
    v = split(_np_linear(x, hf, f"{p}.attention.self.value"))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + bias
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, dim)
    x = _np_layer_norm(x + _np_linear(context, hf, f"{p}.attention.output.dense"),
                       hf[f"{p}.attention.output.LayerNorm.weight"],
                       hf[f"{p}.attention.output.LayerNorm.bias"])
    hidden = _np_linear(x, hf, f"{p}.intermediate.dense")
    hidden = 0.5 * hidden * (1.0 + _erf(hidden / math.sqrt(2.0)))
    x = _np_layer_norm(x + _np_linear(hidden, hf, f"{p}.output.dense"),
                       hf[f"{p}.output.LayerNorm.weight"], hf[f"{p}.output.LayerNorm.bias"])
  return x


def _np_pooled_unit(hidden, pool_mask):
  pooled = (hidden * pool_mask[..., None]).sum(1) / pool_mask.sum(1, keepdims=True)
  return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def test_forward_matches_numpy_reference(minilm):
  backbone, params = minilm
  hf = load_file(str(minilm_weights.package_model_dir() / "model.safetensors"))
  tokens, mask = backbone.encode_texts(["A gripping, beautifully shot film.", "Dull."], 12)
  prompt_length = 4
  prompt = np.random.default_rng(0).normal(0, 0.05, (prompt_length, 384)).astype(np.float32)
  words = np.asarray(backbone.module.apply({"params": params}, tokens, method="embed"))
  np.testing.assert_array_equal(words, hf["embeddings.word_embeddings.weight"][tokens])
  embeddings = np.concatenate([np.broadcast_to(prompt, (2,) + prompt.shape), words], 1)
  full_mask = np.concatenate([np.ones((2, prompt_length), np.int32), mask], 1)
  assert full_mask[1].sum() < full_mask.shape[1]  # the padding path is exercised

  expected = _np_bert(hf, embeddings.astype(np.float64), full_mask)
  hidden = jax.jit(lambda e, m: backbone.module.apply({"params": params}, e, m,
                                                      method="encode"))(embeddings, full_mask)
  np.testing.assert_allclose(np.asarray(hidden), expected, atol=2e-5, rtol=1e-5)

  class_tokens, class_mask = backbone.encode_classes(["negative", "positive"])
  class_hidden = _np_bert(hf, hf["embeddings.word_embeddings.weight"][class_tokens]
                          .astype(np.float64), class_mask)
  classes = _np_pooled_unit(class_hidden, class_mask)
  text_only = full_mask.copy()
  text_only[:, :prompt_length] = 0
  for pool_prompt, pool_mask in ((False, text_only), (True, full_mask)):
    module = backbone.module.clone(pool_prompt=pool_prompt)
    logits = jax.jit(lambda e, m, t, c: module.apply(  # pylint: disable=cell-var-from-loop
        {"params": params}, e, m, t, c, prompt_length, method="score_classes"))(
            embeddings, full_mask, class_tokens, class_mask)
    expected_logits = 20.0 * _np_pooled_unit(expected, pool_mask) @ classes.T
    np.testing.assert_allclose(np.asarray(logits), expected_logits, atol=1e-4)


def test_known_sentence_similarities(minilm):
  backbone, params = minilm
  sentences = ["I love this movie", "This film is wonderful", "The stock market fell today"]
  tokens, mask = backbone.encode_texts(sentences, 16)
  embed = jax.jit(lambda t, m: backbone.module.apply({"params": params}, t, m,
                                                     method="sentence_embeddings"))
  unit = np.asarray(embed(tokens, mask))
  np.testing.assert_allclose(np.linalg.norm(unit, axis=-1), 1.0, atol=1e-5)
  assert unit[0] @ unit[1] == pytest.approx(0.71, abs=0.05)
  assert unit[0] @ unit[2] == pytest.approx(0.0, abs=0.1)
  # Whatever sits in padded positions must not reach the embedding (the mask masks).
  noise = np.random.default_rng(0).integers(1000, 30000, tokens.shape, dtype=np.int32)
  np.testing.assert_allclose(np.asarray(embed(np.where(mask > 0, tokens, noise), mask)),
                             unit, atol=1e-6)


def test_imported_tree_matches_module(minilm):
  backbone, params = minilm
  expected = jax.eval_shape(lambda: random_params(backbone.module))
  shapes = lambda tree: {"/".join(k): v.shape for k, v in
                         flax.traverse_util.flatten_dict(tree).items()}
  assert shapes(params) == shapes(expected)
  assert "encoder/layer_0/attention/query/kernel" in shapes(params)


def test_encode_texts_truncates_and_pads(minilm):
  backbone, _ = minilm
  tokens, mask = backbone.encode_texts(["one two three four five six", "hi"], 5)
  vocab = backbone.vocabulary
  assert tokens.shape == mask.shape == (2, 5) and tokens.dtype == np.int32
  assert tokens[0, 0] == vocab.cls_id and tokens[0, -1] == vocab.sep_id
  assert tokens[1].tolist() == [vocab.cls_id, vocab.encode("hi")[0], vocab.sep_id, 0, 0]
  assert mask.tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
  with pytest.raises(UserError, match="max_length"):
    backbone.encode_texts(["x"], 1000)


# ---------------------------------------------------------------------------------------
# The tiny config through the whole PromptClassifier contract.


@pytest.fixture(scope="module")
def tiny():
  spec = build_classifier(bert.tiny_bert(), ["not insult", "insult"], prompt_length=3)
  params = spec.backbone.load_params()
  tokens, mask = spec.backbone.encode_texts(
      ["you are great", "you are an idiot", "hello there friend", "what a fool"], 8)
  batch = {"tokens": tokens, "mask": mask, "label": np.array([0, 1, 0, 1], np.int32)}
  prompt = spec.initial_prompt(jax.random.PRNGKey(1), params)
  # Jitted, as the trainer runs them: op-by-op dispatch would dominate the test time.
  spec = _Jitted(spec)
  return spec, params, batch, prompt


class _Jitted:
  """The ClassifierSpec with `logits` and `example_losses` compiled."""

  def __init__(self, spec):
    self._spec = spec
    self.logits = jax.jit(spec.logits)
    self.example_losses = jax.jit(spec.example_losses)

  def __getattr__(self, name):
    return getattr(self._spec, name)


def test_tiny_classifier_gives_logits(tiny):
  spec, params, batch, prompt = tiny
  logits = spec.logits(prompt, params, batch["tokens"], batch["mask"])
  assert logits.shape == (4, 2) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits)) and np.all(np.abs(logits) <= 20.0 + 1e-4)
  assert not np.allclose(logits[0], logits[1])  # the text reaches the logits
  other = spec.logits(prompt[::-1], params, batch["tokens"], batch["mask"])
  assert not np.allclose(logits, other)  # and so does the prompt


@pytest.fixture(scope="module")
def tiny_grads(tiny):
  """Jitted (per-example logits, per-example prompt grads, shared prompt grad): one compile
  serves every gradient check."""
  spec, params, _, _ = tiny

  @jax.jit
  def grads(prompt, batch):
    copies = jnp.broadcast_to(prompt, (batch["tokens"].shape[0],) + prompt.shape)
    per_example_logits = spec.logits(prompt, params, batch["tokens"], batch["mask"], copies)
    per_example = jax.grad(lambda c: spec.example_losses(prompt, params, batch, c).sum())(copies)
    shared = jax.grad(lambda p: spec.example_losses(p, params, batch).sum())(prompt)
    return per_example_logits, per_example, shared

  return grads


def test_only_the_prompt_is_trainable(tiny, tiny_grads):
  spec, params, batch, prompt = tiny
  variables = jax.eval_shape(spec.model.init, jax.random.PRNGKey(0), batch["tokens"],
                             batch["mask"])
  paths = ["/".join(k) for k in flax.traverse_util.flatten_dict(variables["params"])]
  # The trainer optimizes what matches the prompt regex: that must be the prompt alone.
  assert [p for p in paths if re.fullmatch(r"prompt/.*", p)] == ["prompt/prompt"]
  assert all(p.startswith(("prompt/", "backbone/")) for p in paths)
  _, _, grad = tiny_grads(prompt, batch)
  assert grad.shape == prompt.shape
  assert np.all(np.linalg.norm(np.asarray(grad), axis=-1) > 0)  # every prompt vector learns


def test_per_example_prompt_matches_shared(tiny, tiny_grads):
  spec, params, batch, prompt = tiny
  per_example_logits, per_example, shared = tiny_grads(prompt, batch)
  np.testing.assert_allclose(np.asarray(per_example_logits),
                             np.asarray(spec.logits(prompt, params, batch["tokens"],
                                                    batch["mask"])), rtol=1e-6, atol=1e-5)
  # Gradients w.r.t. the copies sum to the shared gradient ...
  np.testing.assert_allclose(np.asarray(per_example.sum(0)), np.asarray(shared), atol=1e-5)
  # ... and each is its own example's: flipping example 0's label changes row 0 only.
  label = batch["label"].copy()
  label[0] = 1 - label[0]
  flipped = dict(batch, label=label)
  _, per_example_flipped, _ = tiny_grads(prompt, flipped)
  np.testing.assert_allclose(np.asarray(per_example_flipped[1:]), np.asarray(per_example[1:]),
                             atol=1e-6)
  assert not np.allclose(np.asarray(per_example_flipped[0]), np.asarray(per_example[0]))


def test_too_many_positions_is_a_user_error(tiny):
  spec, params, _, prompt = tiny
  tokens, mask = spec.backbone.encode_texts(["a b c"], 64)
  long_prompt_spec = build_classifier(spec.backbone, ["a", "b"], prompt_length=65)
  with pytest.raises(UserError, match="positions"):
    long_prompt_spec.logits(jnp.zeros((65, 16)), params, tokens, mask)
  del prompt



def test_classifier_passes_the_prompt_length_so_pool_prompt_takes_effect():
  """Through PromptClassifier, pool_prompt=False must pool the text only: its logits then
  equal scoring the same embeddings with the prompt positions excluded by hand."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gbair_jax.models.bert import tiny_bert as make_tiny  # pylint: disable=g-import-not-at-top
  from gbair_jax.models.classifier import build_classifier as build  # pylint: disable=g-import-not-at-top
  results = {}
  for pool_prompt in (False, True):
    backbone = make_tiny(pool_prompt=pool_prompt)
    spec = build(backbone, ("bad", "good"), prompt_length=3)
    frozen = backbone.load_params()
    tokens, mask = backbone.encode_texts(["a fine film", "awful"], 8)
    prompt = jnp.linspace(-1, 1, 3 * 16).reshape(3, 16)
    results[pool_prompt] = np.asarray(spec.logits(prompt, frozen, tokens, mask))
    embeddings = jnp.concatenate(
        [jnp.broadcast_to(prompt, (2, 3, 16)),
         backbone.module.apply({"params": frozen}, tokens, method="embed")], axis=1)
    full_mask = jnp.concatenate([jnp.ones((2, 3), jnp.int32), jnp.asarray(mask)], axis=1)
    class_tokens, class_mask = backbone.encode_classes(["bad", "good"])
    direct = backbone.module.apply({"params": frozen}, embeddings, full_mask, class_tokens,
                                   class_mask, prompt_length=3, method="score_classes")
    np.testing.assert_allclose(results[pool_prompt], direct, rtol=1e-5, atol=1e-5)
  assert not np.allclose(results[False], results[True])
