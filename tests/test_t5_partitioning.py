"""Sharding T5 weights over a ('data', 'model') mesh of 8 fake CPU devices: every kernel
split as the rules say, and the sharded model gives the unsharded scores and gradients."""
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from gbair_jax.models import classifier as classifier_lib
from gbair_jax.models import t5
from gbair_jax.models import t5_checkpoint
from gbair_jax.runtime import mesh as mesh_lib

# What T5X's standard (1-D parameter partitioning) rules give each tiny-T5 parameter.
EXPECTED_1D = [
    ("token_embedder/embedding", P("model", None)),
    ("encoder/relpos_bias/rel_embedding", P("model", None)),
    ("decoder/relpos_bias/rel_embedding", P("model", None)),
    ("encoder/layers_1/attention/query/kernel", P(None, "model")),
    ("encoder/layers_0/attention/key/kernel", P(None, "model")),
    ("decoder/layers_0/self_attention/value/kernel", P(None, "model")),
    ("decoder/layers_1/encoder_decoder_attention/query/kernel", P(None, "model")),
    ("decoder/layers_1/encoder_decoder_attention/out/kernel", P("model", None)),
    ("encoder/layers_0/attention/out/kernel", P("model", None)),
    ("encoder/layers_0/mlp/wi_0/kernel", P(None, "model")),
    ("decoder/layers_1/mlp/wi_1/kernel", P(None, "model")),
    ("decoder/layers_0/mlp/wo/kernel", P("model", None)),
    ("decoder/logits_dense/kernel", P(None, "model")),
    ("encoder/layers_0/pre_attention_layer_norm/scale", P(None)),
    ("decoder/decoder_norm/scale", P(None)),
]


@pytest.fixture(scope="module")
def tiny():
  bundle = t5.tiny_t5(seed=5)
  return bundle, jax.tree.map(np.asarray, bundle.load_params())


@pytest.fixture(scope="module")
def mesh():
  assert jax.device_count() == 8, "conftest.py should give 8 fake CPU devices"
  return mesh_lib.make_mesh(model_parallelism=4)


def _flat(tree):
  return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(tree).items()}


def test_mesh_is_2x4_with_auto_axes(mesh):
  assert dict(mesh.shape) == {"data": 2, "model": 4}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  from gbair_jax.errors import UserError
  with pytest.raises(UserError, match="model_parallelism=3 does not divide"):
    mesh_lib.make_mesh(model_parallelism=3)


def test_every_weight_is_placed_as_the_rules_say(tiny, mesh):
  _, params = tiny
  placed = _flat(mesh_lib.place_params(params, mesh))
  assert len(placed) == len(_flat(params))
  for name, spec in EXPECTED_1D:
    array = placed[name]
    assert array.sharding.spec == spec, name
    split = [mesh.shape[a] if a else 1 for a in spec] + [1] * (array.ndim - len(spec))
    expected_shard = tuple(size // parts for size, parts in zip(array.shape, split))
    assert {s.data.shape for s in array.addressable_shards} == {expected_shard}, name
  # Every attention/MLP kernel is split over 'model', none over 'data' (1-D rules).
  for name, array in placed.items():
    spec = tuple(array.sharding.spec)
    assert "data" not in spec, name
    if name.endswith("kernel"):
      assert spec.count("model") == 1, name
  assert mesh_lib.bytes_per_device(params, mesh) < sum(
      v.nbytes for v in _flat(params).values()) / 2


def test_two_dimensional_rules_also_split_d_model_over_data(tiny, mesh):
  _, params = tiny
  specs = _flat(mesh_lib.partition_specs(params, mesh, mesh_lib.standard_rules(2)))
  assert specs["encoder/layers_0/attention/query/kernel"] == P("data", "model")
  assert specs["decoder/layers_0/mlp/wo/kernel"] == P("model", "data")
  assert specs["token_embedder/embedding"] == P("model", "data")


def test_sharded_model_gives_the_unsharded_scores_and_gradients(tiny, mesh):
  bundle, params = tiny
  spec = classifier_lib.build_classifier(bundle, ["insult", "not insult"], prompt_length=3)
  tokens, mask = bundle.encode_texts(["this is a test", "what", "the cat", "sat on the mat"], 10)
  prompt = spec.initial_prompt(jax.random.PRNGKey(0), params)
  batch = {"tokens": tokens, "mask": mask, "label": np.array([0, 1, 1, 0])}

  def logits_and_grads(backbone_params, batch):
    per_example = jnp.broadcast_to(prompt, (4,) + prompt.shape)
    loss = lambda p: spec.example_losses(prompt, backbone_params, batch, p).sum()
    return (spec.logits(prompt, backbone_params, batch["tokens"], batch["mask"]),
            jax.grad(loss)(per_example))

  step = jax.jit(logits_and_grads)
  reference_logits, reference_grads = step(params, batch)

  placed = mesh_lib.place_params(params, mesh)
  sharded_batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
  logits, grads = step(placed, sharded_batch)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(reference_logits), rtol=1e-5, atol=1e-5)
  # Sharded reductions add in another order: compare at the gradients' own scale.
  scale = float(np.abs(reference_grads).max())
  assert scale > 0
  np.testing.assert_allclose(np.asarray(grads), np.asarray(reference_grads), rtol=1e-3,
                             atol=1e-3 * scale)


def test_orbax_checkpoint_loads_straight_onto_the_mesh(tmp_path, tiny, mesh):
  _, params = tiny
  t5_checkpoint.write_orbax_t5x_checkpoint(str(tmp_path), 1, params)
  shardings = mesh_lib.param_shardings(params, mesh)
  loaded = _flat(t5_checkpoint.load_t5x_params(str(tmp_path), shardings=shardings))
  for name, value in _flat(params).items():
    assert loaded[name].sharding.is_equivalent_to(_flat(shardings)[name], value.ndim), name
    np.testing.assert_array_equal(np.asarray(loaded[name]), value)


def test_dimension_the_mesh_cannot_divide_stays_whole(tiny):
  _, params = tiny
  wide = mesh_lib.make_mesh(model_parallelism=8)
  specs = _flat(mesh_lib.partition_specs(params, wide))
  assert specs["encoder/relpos_bias/rel_embedding"] == P(None, None)  # 4 heads, 8 devices
  assert specs["encoder/layers_0/attention/query/kernel"] == P(None, "model")  # 16 = 8 x 2


def test_parameter_without_a_rule_is_an_error(tiny):
  _, params = tiny
  with pytest.raises(ValueError, match="encoder/adapter/kernel"):
    mesh_lib.partition_specs({**params, "encoder": {**params["encoder"],
                                                        "adapter": {"kernel": np.zeros((2, 2))}}})


def test_build_experiment_partitions_frozen_weights_and_training_matches(tmp_path):
  """The gin switch the paper-scale configs use: weights land on the mesh, and a training
  epoch on them ends with the prompt an unpartitioned run ends with."""
  import gin
  from gbair_jax import config
  from gbair_jax.errors import UserError
  from gbair_jax.train.experiment import build_experiment
  from gbair_jax.train.trainer import train_prompt
  prompts = {}
  for partition in (False, True):
    gin.clear_config()
    config.parse_gin(["gin/models/t5_tiny.gin", "gin/data/insults.gin"], [
        "load_data.max_train_examples = 24", "load_data.max_test_examples = 8",
        f"build_experiment.partition_frozen = {partition}", "build_experiment.sequence_length = 8",
        "partitioning.make_mesh.model_parallelism = 4", "train_prompt.tensorboard = False"])
    exp = build_experiment()
    kernel = exp.frozen["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    if partition:
      assert kernel.sharding.spec == P(None, "model") and len(kernel.sharding.device_set) == 8
    assert dict(exp.mesh.shape) == {"data": 2, "model": 4}
    splits = {k: v for k, v in exp.tokenized_splits().items() if k != "validation"}
    prompts[partition] = train_prompt(exp.spec, exp.frozen, splits,
                                      str(tmp_path / str(partition)), num_epochs=1,
                                      batch_size=8, progress=False, mesh=exp.mesh).prompt
  np.testing.assert_allclose(prompts[True], prompts[False], rtol=2e-4, atol=2e-5)
  gin.clear_config()
  config.parse_gin(["gin/models/minilm.gin", "gin/data/insults.gin"], [
      "load_data.max_train_examples = 8", "build_experiment.partition_frozen = True"])
  with pytest.raises(UserError, match="build_experiment.partition_frozen: no sharding rule matches parameter"):
    build_experiment()
