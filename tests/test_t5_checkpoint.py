"""T5X checkpoints: a tiny random T5 written in the Orbax and the msgpack + TensorStore
layouts loads back bit-exactly, without touching optimizer state, and runs the model."""
import dataclasses
import json
import shutil

import flax.serialization
import flax.traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gbair_jax.errors import UserError
from gbair_jax.models import backbone as backbone_lib
from gbair_jax.models import t5
from gbair_jax.models import t5_checkpoint

@pytest.fixture(scope="module")
def params():
  module = t5.T5Backbone(t5.TINY_CONFIG)
  return jax.tree.map(np.asarray, backbone_lib.random_params(module, seed=11))


def _adafactor_like_state(params):
  """Factored second moments, as T5X's Adafactor keeps for each kernel."""
  def moments(kernel):
    if kernel.ndim == 2:
      return {"v_row": np.full(kernel.shape[:1], 7.0, np.float32),
              "v_col": np.full(kernel.shape[1:], 7.0, np.float32)}
    return {"v": np.full(kernel.shape, 7.0, np.float32)}
  return jax.tree.map(moments, params)


def _assert_exactly_equal(loaded, params):
  flat_loaded = flax.traverse_util.flatten_dict(loaded)
  flat_params = flax.traverse_util.flatten_dict(params)
  assert set(flat_loaded) == set(flat_params)
  for key, value in flat_params.items():
    got = np.asarray(flat_loaded[key])
    assert got.dtype == value.dtype, key
    np.testing.assert_array_equal(got, value, err_msg="/".join(key))


def test_legacy_msgpack_tensorstore_layout_round_trips(tmp_path, params):
  # Norm scales inline in the msgpack, kernels in TensorStore: T5X writes both kinds.
  inline = lambda path, array: path[-1] == "scale"
  step_dir = t5_checkpoint.write_legacy_t5x_checkpoint(
      str(tmp_path), 1000, params, _adafactor_like_state(params), inline=inline)

  assert step_dir == tmp_path / "checkpoint_1000"
  kernel_dir = step_dir / "target.encoder.layers_0.attention.query.kernel"
  assert json.loads((kernel_dir / ".zarray").read_text())["compressor"]["id"] == "gzip"
  contents = flax.serialization.msgpack_restore((step_dir / "checkpoint").read_bytes())
  assert set(contents) == {"version", "optimizer"} and contents["version"] == 3
  target = contents["optimizer"]["target"]
  assert target["encoder"]["layers_0"]["attention"]["query"]["kernel"]["kvstore"] == {
      "driver": "file", "path": "target.encoder.layers_0.attention.query.kernel"}
  assert isinstance(target["encoder"]["encoder_norm"]["scale"], np.ndarray)

  # Optimizer state is never read: the loader still works with its arrays gone.
  removed = [p for p in step_dir.iterdir() if p.name.startswith("state.")]
  assert removed
  for path in removed:
    shutil.rmtree(path)

  for where in (tmp_path, step_dir, step_dir / "checkpoint"):
    _assert_exactly_equal(t5_checkpoint.load_t5x_params(str(where)), params)


@pytest.mark.parametrize("use_ocdbt", [True, False])
def test_orbax_layout_round_trips(tmp_path, params, use_ocdbt):
  step_dir = t5_checkpoint.write_orbax_t5x_checkpoint(
      str(tmp_path), 20, params, _adafactor_like_state(params), use_ocdbt=use_ocdbt)
  assert (step_dir / "state" / "_METADATA").exists()
  assert not (step_dir / "checkpoint").exists()
  _assert_exactly_equal(t5_checkpoint.load_t5x_params(str(tmp_path)), params)
  _assert_exactly_equal(t5_checkpoint.load_t5x_params(str(step_dir)), params)


def test_early_orbax_t5x_tree_in_the_step_dir_loads(tmp_path, params):
  # Early Orbax T5X kept the msgpack-era tree {"version", "optimizer": {"target", ...}}
  # and wrote it straight into checkpoint_<step>/.
  state = {"step": np.asarray(5), "param_states": _adafactor_like_state(params)}
  tree = {"version": np.asarray(3), "optimizer": {"target": params, "state": state}}
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "checkpoint_5", tree)
  _assert_exactly_equal(t5_checkpoint.load_t5x_params(str(tmp_path)), params)


def test_latest_step_by_default_and_step_selects(tmp_path, params):
  later = jax.tree.map(lambda a: a + 1, params)
  t5_checkpoint.write_legacy_t5x_checkpoint(str(tmp_path), 9, params)
  t5_checkpoint.write_legacy_t5x_checkpoint(str(tmp_path), 10, later)
  _assert_exactly_equal(t5_checkpoint.load_t5x_params(str(tmp_path)), later)
  _assert_exactly_equal(t5_checkpoint.load_t5x_params(str(tmp_path), step=9), params)
  with pytest.raises(UserError, match="checkpoint_11"):
    t5_checkpoint.load_t5x_params(str(tmp_path), step=11)


def test_dtype_casts_on_load(tmp_path, params):
  t5_checkpoint.write_legacy_t5x_checkpoint(str(tmp_path / "legacy"), 1, params)
  t5_checkpoint.write_orbax_t5x_checkpoint(str(tmp_path / "orbax"), 1, params)
  for layout in ("legacy", "orbax"):
    loaded = t5_checkpoint.load_t5x_params(str(tmp_path / layout), dtype="bfloat16")
    kernel = loaded["decoder"]["logits_dense"]["kernel"]
    assert kernel.dtype == jax.numpy.bfloat16
    np.testing.assert_allclose(np.asarray(kernel, np.float32),
                               params["decoder"]["logits_dense"]["kernel"], rtol=1e-2)


def test_loaded_weights_run_the_model_through_the_gin_factory(tmp_path, params):
  t5_checkpoint.write_legacy_t5x_checkpoint(str(tmp_path / "legacy"), 3, params)
  t5_checkpoint.write_orbax_t5x_checkpoint(str(tmp_path / "orbax"), 3, params)
  vocabulary_path = t5.seqio_test_vocabulary_path()
  original = t5.tiny_t5()
  tokens, mask = original.encode_texts(["this is a test", "what"], 8)
  embeddings = original.module.apply({"params": params}, tokens, method="embed")
  classes, class_mask = original.encode_classes(["ok", "not ok"])
  score = jax.jit(lambda p: original.module.apply({"params": p}, embeddings, mask, classes,
                                                  class_mask, method="score_classes"))
  expected = np.asarray(score(params))
  for layout in ("legacy", "orbax"):
    bundle = t5.t5(checkpoint_path=str(tmp_path / layout), vocabulary_path=vocabulary_path,
                   config=t5.TINY_CONFIG)
    np.testing.assert_array_equal(np.asarray(score(bundle.load_params())), expected)


def test_checkpoint_of_another_size_is_a_user_error(tmp_path, params):
  t5_checkpoint.write_orbax_t5x_checkpoint(str(tmp_path), 1, params)
  bundle = t5.t5(checkpoint_path=str(tmp_path), vocabulary_path=t5.seqio_test_vocabulary_path(),
                 config=dataclasses.replace(t5.TINY_CONFIG, mlp_dim=64))
  with pytest.raises(UserError, match="mlp/wi_0/kernel"):
    bundle.load_params()


def test_paths_that_are_not_checkpoints_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    t5_checkpoint.load_t5x_params(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="not a T5X checkpoint"):
    t5_checkpoint.load_t5x_params(str(tmp_path / "empty"))


def test_relative_tensorstore_paths_resolve_for_local_and_gcs_dirs():
  spec = {"driver": "zarr", "dtype": "float32",
          "kvstore": {"driver": "file", "path": "target.decoder.logits_dense.kernel"},
          "metadata": {"compressor": {"id": "gzip"}, "shape": [4, 8], "chunks": [4, 8]}}
  local = t5_checkpoint._absolute_spec(spec, "/ckpt/checkpoint_7")
  assert local["kvstore"] == {"driver": "file",
                              "path": "/ckpt/checkpoint_7/target.decoder.logits_dense.kernel"}
  assert "chunks" not in local["metadata"] and spec["metadata"]["chunks"] == [4, 8]
  remote = t5_checkpoint._absolute_spec(spec, "gs://t5-data/models/x/checkpoint_7")
  assert remote["kvstore"] == {"driver": "gcs", "bucket": "t5-data",
                               "path": "models/x/checkpoint_7/target.decoder.logits_dense.kernel"}
  # tensorstore < 0.1.14 specs kept the path next to the driver.
  old = {"driver": "zarr", "path": "target.a", "kvstore": {"driver": "file"}, "metadata": {}}
  assert t5_checkpoint._absolute_spec(old, "/c")["kvstore"]["path"] == "/c/target.a"
  with pytest.raises(UserError, match="uint16"):
    t5_checkpoint._absolute_spec({**spec, "dtype": "uint16"}, "/c")
