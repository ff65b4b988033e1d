"""The T5 gin files: published T5 1.1 dimensions, headers whose sizes add up, and the
tiny one building a working classifier through `build_classifier.backbone`."""
import pathlib
import re

import gin
import jax
import pytest

from gbair_jax.models import classifier as classifier_lib
from gbair_jax.models import t5  # pylint: disable=unused-import  # registers t5, tiny_t5

GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin" / "models"

# T5 1.1 (and Flan-T5) as published in T5X's t5_1_1/*.gin: d_model, heads, layers, d_ff.
PUBLISHED = {
    "small": (512, 6, 8, 1024),
    "base": (768, 12, 12, 2048),
    "large": (1024, 16, 24, 2816),
    "xl": (2048, 32, 24, 5120),
    "xxl": (4096, 64, 24, 10240),
}


def _parameter_count(d_model, heads, layers, d_ff, vocab=32128, head_dim=64, buckets=32):
  attention = 4 * d_model * heads * head_dim
  mlp = 3 * d_model * d_ff
  encoder = layers * (attention + mlp + 2 * d_model) + d_model + heads * buckets
  decoder = layers * (2 * attention + mlp + 3 * d_model) + d_model + heads * buckets
  return 2 * vocab * d_model + encoder + decoder  # embedding + untied logits_dense


@pytest.mark.parametrize("size", sorted(PUBLISHED))
def test_size_files_bind_published_dimensions(size):
  path = GIN_DIR / f"t5_{size}.gin"
  gin.add_config_file_search_path(str(GIN_DIR.parent.parent))  # resolves 'gin/models/...'
  gin.parse_config_file(str(path))
  assert gin.query_parameter("%BACKBONE").selector == "t5"
  assert gin.query_parameter("t5.name") == f"t5_{size}"
  d_model, heads, layers, d_ff = PUBLISHED[size]
  config = t5.T5Config()  # what t5() builds the model from: the gin-bound dimensions
  assert (config.emb_dim, config.num_heads, config.num_encoder_layers,
          config.num_decoder_layers, config.mlp_dim) == (d_model, heads, layers, layers, d_ff)
  assert (config.head_dim, config.vocab_size) == (64, 32128)
  assert tuple(config.mlp_activations) == ("gelu", "linear")
  assert config.logits_via_embedding is False

  header = path.read_text().split("\n\n")[0]
  assert f"--gin_file=gin/models/t5_{size}.gin" in header and "gbair run" in header
  count = _parameter_count(d_model, heads, layers, d_ff)
  stated = re.search(r"\(([\d.]+)([MB]) parameters\)", header)
  value = float(stated.group(1)) * (1e6 if stated.group(2) == "M" else 1e9)
  assert abs(value - count) / count < 0.01, (value, count)
  memory = re.search(r"weights ([\d.]+) GiB in float32, ([\d.]+) GiB", header).groups()
  for stated_gib, bytes_per_weight in zip(memory, (4, 2)):
    decimals = len(stated_gib.split(".")[1])
    assert float(stated_gib) == round(count * bytes_per_weight / 2**30, decimals), stated_gib


def test_parameter_count_formula_matches_the_model():
  # Pins the formula above (and so the headers) to the Flax model's actual tree.
  module = t5.T5Backbone(t5.T5Config(emb_dim=64, num_heads=2, num_encoder_layers=3,
                                     num_decoder_layers=3, head_dim=64, mlp_dim=96))
  actual = sum(leaf.size for leaf in jax.tree.leaves(t5.abstract_params(module)))
  assert actual == _parameter_count(64, 2, 3, 96)


def test_tiny_gin_builds_a_working_classifier():
  gin.parse_config_file(str(GIN_DIR / "t5_tiny.gin"))
  spec = classifier_lib.build_classifier(label_names=["insult", "not insult"], prompt_length=2)
  assert spec.backbone.name == "tiny_t5"
  params = spec.backbone.load_params()
  tokens, mask = spec.backbone.encode_texts(["this is a test"], 8)
  logits = jax.jit(spec.logits)(spec.initial_prompt(jax.random.PRNGKey(0), params), params,
                                tokens, mask)
  assert logits.shape == (1, 2)
