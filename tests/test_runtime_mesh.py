"""The experiment's one mesh: built from gin, recorded, and batches that do not divide it."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gbair_jax import config
from gbair_jax.errors import UserError
from gbair_jax.runtime import mesh as mesh_lib


def test_mesh_comes_from_gin_and_describes_itself():
  config.parse_gin([], ["partitioning.make_mesh.model_parallelism = 2"])
  mesh = mesh_lib.make_mesh()
  assert dict(mesh.shape) == {"data": 4, "model": 2}
  assert mesh_lib.describe(mesh) == {"mesh": {"data": 4, "model": 2}, "device_kind": "cpu",
                                     "num_processes": 1}
  with pytest.raises(UserError, match="partitioning.make_mesh: mesh 3x2"):
    mesh_lib.make_mesh(data_parallelism=3)


def test_batches_split_over_data_and_pad_with_masked_rows():
  mesh = mesh_lib.make_mesh(model_parallelism=2)  # data = 4
  batch = {"x": np.arange(6, dtype=np.float32), "valid": np.ones(6, bool)}
  placed = mesh_lib.shard_batch(batch, mesh)
  assert placed["x"].shape == (8,) and placed["x"].sharding.spec == P("data")
  np.testing.assert_array_equal(np.asarray(placed["valid"]), [1] * 6 + [0] * 2)
  assert mesh_lib.shard_batch(placed, mesh)["x"] is placed["x"]  # already split: kept
  assert mesh_lib.process_rows(mesh, 8) == slice(0, 8)  # one process holds every row


def test_placed_weights_stay_placed_and_host_values_are_replicated():
  mesh = mesh_lib.make_mesh(model_parallelism=2)
  frozen = {"kernel": np.arange(16, dtype=np.float32).reshape(4, 4)}
  split = mesh_lib.put(frozen, {"kernel": jax.sharding.NamedSharding(mesh, P(None, "model"))})
  assert mesh_lib.on_mesh(split, mesh)["kernel"] is split["kernel"]
  replicated = mesh_lib.replicate(frozen, mesh)["kernel"]
  assert replicated.sharding.is_fully_replicated and len(replicated.sharding.device_set) == 8
  np.testing.assert_array_equal(mesh_lib.host_value(replicated), frozen["kernel"])


def test_a_batch_size_the_data_axis_does_not_divide_trains_like_one_device(tmp_path):
  """train_prompt.batch_size=12 on 8 devices: padded to 16, the padding masked out."""
  from gbair_jax.train.experiment import build_experiment
  from gbair_jax.train.trainer import train_prompt
  config.parse_gin(["gin/models/tiny_bert.gin", "gin/data/insults.gin"], [
      "load_data.max_train_examples = 36", "load_data.max_test_examples = 8",
      "build_experiment.sequence_length = 8", "train_prompt.tensorboard = False"])
  exp = build_experiment()
  assert exp.runtime()["mesh"] == {"data": 8, "model": 1}
  splits = {k: v for k, v in exp.tokenized_splits().items() if k != "validation"}
  results = [train_prompt(exp.spec, exp.frozen, splits, str(tmp_path / name), num_epochs=1,
                          batch_size=12, progress=False, mesh=mesh)
             for name, mesh in (("one", mesh_lib.single_device_mesh()), ("eight", exp.mesh))]
  np.testing.assert_allclose(results[1].prompt, results[0].prompt, rtol=1e-4, atol=1e-6)
  assert results[1].metrics["mesh"] == {"data": 8, "model": 1}
  assert results[0].metrics["mesh"] == {"data": 1, "model": 1}
  np.testing.assert_allclose(results[1].metrics["test"]["auc"], results[0].metrics["test"]["auc"])
