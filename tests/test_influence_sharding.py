"""TracIn over a `data` mesh of 8 fake CPU devices equals TracIn on one device.

Also pins a JAX 0.10 trap: under shard_map the gradient w.r.t. a replicated prompt is
silently summed over devices unless the prompt is cast to 'varying' first.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from gbair_jax.influence import per_example_grads as grads_lib
from gbair_jax.influence import tracin
from gbair_jax.influence.projection import RandomProjection
from gbair_jax.runtime import mesh as mesh_lib

VOCAB, WIDTH, TOKENS, PROMPT_LENGTH, BATCH = 13, 6, 4, 2, 16


def token_mlp_loss(prompt, frozen, batch, per_example_prompt=None):
  """A nonlinear classifier over [prompt; token embeddings], frozen weights nested."""
  embeddings = jnp.asarray(frozen["embedding"])[batch["tokens"]]
  prompts = (jnp.broadcast_to(prompt, (embeddings.shape[0],) + prompt.shape)
             if per_example_prompt is None else per_example_prompt)
  hidden = jnp.tanh(jnp.concatenate([prompts, embeddings], axis=1) @ frozen["mlp"]["hidden"])
  log_probs = jax.nn.log_softmax(hidden.mean(axis=1) @ frozen["mlp"]["out"])
  return -jnp.take_along_axis(log_probs, batch["label"][:, None], axis=1)[:, 0]


def make_problem(num_train=45, seed=0):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
  frozen = {"embedding": normal(VOCAB, WIDTH),
            "mlp": {"hidden": normal(WIDTH, 10), "out": normal(10, 3)}}

  def batches(count, first_id):
    out = []
    for start in range(0, count, BATCH):
      out.append({"tokens": rng.integers(0, VOCAB, (BATCH, TOKENS)).astype(np.int32),
                  "label": rng.integers(0, 3, BATCH).astype(np.int32),
                  "example_id": np.arange(start, start + BATCH, dtype=np.int64) + first_id,
                  "valid": np.arange(start, start + BATCH) < count})
    return out

  checkpoints = [(normal(PROMPT_LENGTH, WIDTH), lr) for lr in (0.2, 0.1)]
  return checkpoints, frozen, batches(num_train, 0), batches(6, 10**6)


def relative_error(got, want):
  return np.max(np.abs(got - want)) / np.max(np.abs(want))


@pytest.mark.parametrize("options", [
    tracin.GradientOptions(),
    tracin.GradientOptions(method="vmap", normalize=True,
                           projection=RandomProjection(dim=5, seed=1)),
], ids=["raw", "vmap-cosine-projected"])
def test_eight_devices_score_like_one(options):
  checkpoints, frozen, train, queries = make_problem()
  mesh = mesh_lib.make_mesh()
  assert mesh.shape == {"data": 8, "model": 1}
  results = [tracin.tracin_scores(token_mlp_loss, checkpoints, frozen, train, queries,
                                  options=options, top_k=5, keep_scores=True, mesh=m,
                                  progress=False) for m in (None, mesh)]
  one, eight = results
  np.testing.assert_array_equal(eight.example_ids, one.example_ids)
  assert one.example_ids.shape == (45,)
  for field in ("scores", "self_influence", "negative_influence", "mean_influence"):
    assert relative_error(getattr(eight, field), getattr(one, field)) <= 1e-5, field
  np.testing.assert_array_equal(eight.opponent_ids, one.opponent_ids)
  np.testing.assert_array_equal(eight.proponent_ids, one.proponent_ids)
  np.testing.assert_array_equal(eight.opponent_count, one.opponent_count)


def test_the_shard_map_gradient_trap_is_avoided(monkeypatch):
  checkpoints, frozen, train, _ = make_problem()
  prompt, batch, mesh = checkpoints[0][0], train[0], mesh_lib.make_mesh()
  want = np.asarray(grads_lib.per_example_grads(token_mlp_loss, prompt, frozen, batch))
  got = np.asarray(grads_lib.sharded_per_example_grads(token_mlp_loss, prompt, frozen, batch,
                                                      mesh))
  assert relative_error(got, want) <= 1e-5

  # The same code with the pcast turned into a no-op (check_vma left at its default):
  # each device's gradient becomes the sum over devices of the examples in its row.
  monkeypatch.setattr(jax.lax, "pcast", lambda x, *args, **kwargs: x)
  jax.clear_caches()  # jit would otherwise reuse the program traced with the real pcast
  try:
    trapped = np.asarray(grads_lib.sharded_per_example_grads(token_mlp_loss, prompt, frozen,
                                                            batch, mesh))
  finally:
    monkeypatch.undo()
    jax.clear_caches()
  assert relative_error(trapped, want) > 0.5
  summed_over_devices = want.reshape(8, BATCH // 8, -1).sum(axis=0)
  np.testing.assert_allclose(trapped.reshape(8, BATCH // 8, -1),
                             np.broadcast_to(summed_over_devices, (8, BATCH // 8, want.shape[1])),
                             rtol=1e-4, atol=1e-6)


def test_mesh_is_auto_typed_and_uneven_batches_are_padded_and_masked():
  mesh = mesh_lib.make_mesh()
  assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
  checkpoints, frozen, train, _ = make_problem()
  uneven = {k: v[:12] for k, v in train[0].items()}  # 12 rows over 8 devices: padded to 16
  want = np.asarray(grads_lib.per_example_grads(token_mlp_loss, checkpoints[0][0], frozen,
                                                uneven))
  got = np.asarray(grads_lib.sharded_per_example_grads(token_mlp_loss, checkpoints[0][0],
                                                       frozen, uneven, mesh))
  assert got.shape == (16, want.shape[1])
  assert relative_error(got[:12], want) <= 1e-5
  assert not np.any(got[12:])  # the padding rows are masked out
  no_valid = {k: v for k, v in uneven.items() if k != "valid"}
  with pytest.raises(ValueError, match="8-way `data` mesh axis"):
    mesh_lib.shard_batch(no_valid, mesh)
