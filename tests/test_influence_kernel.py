"""The per-example gradient kernel and the random projection, against plain references.

A small attention model (prompt prepended to token embeddings, frozen weights as a nested
pytree) stands in for a backbone; logistic regression gives closed-form gradients.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbair_jax.errors import UserError
from gbair_jax.influence import per_example_grads as grads_lib
from gbair_jax.influence.projection import RandomProjection
from tests.helpers import logistic_loss

PROMPT_LENGTH, TOKENS, WIDTH, VOCAB = 3, 5, 8, 11


def attention_loss(prompt, frozen, batch, per_example_prompt=None):
  """Cross-entropy of a one-layer attention classifier with a soft prompt."""
  embeddings = jnp.asarray(frozen["embedding"])[batch["tokens"]]
  batch_size = embeddings.shape[0]
  prompts = (jnp.broadcast_to(prompt, (batch_size,) + prompt.shape)
             if per_example_prompt is None else per_example_prompt)
  hidden = jnp.concatenate([prompts, embeddings], axis=1)
  mask = jnp.concatenate([jnp.ones((batch_size, prompt.shape[0]), bool),
                          batch["mask"].astype(bool)], axis=1)
  layer = frozen["layer"]
  logits = jnp.einsum("btd,bsd->bts", hidden @ layer["query"], hidden @ layer["key"])
  attention = jax.nn.softmax(jnp.where(mask[:, None, :], logits, -1e9), axis=-1)
  hidden = hidden + jnp.tanh(jnp.einsum("bts,bsd->btd", attention, hidden))
  pooled = jnp.sum(hidden * mask[..., None], 1) / jnp.sum(mask, 1, keepdims=True)
  log_probs = jax.nn.log_softmax(pooled @ frozen["classes"])
  return -jnp.take_along_axis(log_probs, batch["label"][:, None], axis=1)[:, 0]


def attention_problem(batch_size=6, seed=0):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
  frozen = {"embedding": normal(VOCAB, WIDTH), "classes": normal(WIDTH, 3),
            "layer": {"query": normal(WIDTH, WIDTH), "key": normal(WIDTH, WIDTH)}}
  mask = np.ones((batch_size, TOKENS), np.int32)
  mask[0, 3:] = 0  # a short example: attention masking must stay per example
  batch = {"tokens": rng.integers(0, VOCAB, (batch_size, TOKENS)).astype(np.int32),
           "mask": mask, "label": rng.integers(0, 3, batch_size).astype(np.int32),
           "example_id": np.arange(batch_size, dtype=np.int64) + 2**40,
           "valid": np.arange(batch_size) < batch_size - 1}  # last row is padding
  return normal(PROMPT_LENGTH, WIDTH), frozen, batch


def naive_grads(loss_fn, prompt, frozen, batch):
  """One jax.grad per example, on a batch of one."""
  # Jitted once (every call has a batch of one) so the loop stays fast.
  one_grad = jax.jit(jax.grad(lambda p, single: loss_fn(p, frozen, single)[0]))
  rows = []
  for b in range(batch["valid"].shape[0]):
    single = {k: np.asarray(v)[b:b + 1] for k, v in batch.items() if k != "example_id"}
    grad = one_grad(jnp.asarray(prompt), single)
    rows.append(np.asarray(grad).reshape(-1) * batch["valid"][b])
  return np.stack(rows)




@pytest.mark.parametrize("method", grads_lib.METHODS)
def test_kernel_equals_naive_per_example_loop(method):
  prompt, frozen, batch = attention_problem()
  got = np.asarray(grads_lib.per_example_grads(attention_loss, prompt, frozen, batch,
                                               method=method))
  want = naive_grads(attention_loss, prompt, frozen, batch)
  assert got.shape == (6, PROMPT_LENGTH * WIDTH)
  assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
  # Examples differ: a kernel that summed or broadcast one gradient would fail here.
  assert np.min(np.abs(want[0] - want[1:5]).max(axis=1)) > 1e-3


@pytest.mark.parametrize("method", grads_lib.METHODS)
def test_logistic_gradients_match_closed_form(method):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(5, 6)).astype(np.float32)
  y = np.array([0, 1, 1, 0, 1], np.int32)
  w = rng.normal(size=(2, 3)).astype(np.float32)
  batch = {"features": x, "label": y, "valid": np.ones(5, bool)}
  got = grads_lib.per_example_grads(logistic_loss, w, {"bias": np.float32(-0.5)}, batch,
                                    method=method)
  sigma = 1 / (1 + np.exp(-(x.astype(np.float64) @ w.reshape(-1) - 0.5)))
  np.testing.assert_allclose(got, (sigma - y)[:, None] * x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", grads_lib.METHODS)
def test_padded_rows_are_zero_even_when_their_loss_is_nan(method):
  prompt, frozen, batch = attention_problem()
  clean = np.asarray(grads_lib.per_example_grads(attention_loss, prompt, frozen, batch,
                                                 method=method))
  batch["mask"][-1] = 0
  frozen = dict(frozen, embedding=np.concatenate([frozen["embedding"],
                                                  np.full((1, WIDTH), np.nan, np.float32)]))
  batch["tokens"][-1] = VOCAB  # garbage in the padded row: a NaN embedding
  got = np.asarray(grads_lib.per_example_grads(attention_loss, prompt, frozen, batch,
                                               method=method))
  assert np.all(got[-1] == 0)
  np.testing.assert_allclose(got[:-1], clean[:-1], rtol=1e-6)


def test_unknown_method_is_rejected():
  prompt, frozen, batch = attention_problem()
  with pytest.raises(ValueError, match="method"):
    grads_lib.per_example_grads(attention_loss, prompt, frozen, batch, method="loop")


def test_device_batch_drops_ids_and_strings():
  batch = {"example_id": np.array([2**40]), "text": np.array(["a"]), "valid": np.array([True]),
           "tokens": np.array([[1, 2]])}
  assert sorted(grads_lib.device_batch(batch)) == ["tokens", "valid"]


def test_projection_sizes_are_user_errors_naming_the_binding():
  with pytest.raises(UserError, match="tracin_opponents.projection_dim"):
    RandomProjection(dim=0)
  with pytest.raises(UserError, match="block_rows"):
    RandomProjection(dim=4, block_rows=0)


def test_projection_is_seeded_and_blocks_equal_the_matrix():
  grads = np.random.default_rng(2).normal(size=(4, 50)).astype(np.float32)
  projection = RandomProjection(dim=7, seed=3, block_rows=16)
  matrix = projection.matrix(50)
  assert matrix.shape == (50, 7)
  np.testing.assert_array_equal(matrix, RandomProjection(dim=7, seed=3, block_rows=16).matrix(50))
  assert not np.allclose(matrix, RandomProjection(dim=7, seed=4, block_rows=16).matrix(50))
  whole = projection.project(jnp.asarray(grads), matrix)
  blocked = jax.jit(projection.project)(jnp.asarray(grads))
  np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(whole, grads @ np.asarray(matrix), rtol=1e-5, atol=1e-6)


def test_projection_preserves_inner_products_on_average():
  # E[R R^T] = I: with d = 64 and k = 4096 the Gram matrix is within a few percent.
  grads = np.random.default_rng(5).normal(size=(6, 64)).astype(np.float32)
  projected = np.asarray(RandomProjection(dim=4096, seed=0).project(jnp.asarray(grads)))
  gram, want = projected @ projected.T, grads @ grads.T
  assert np.max(np.abs(gram - want)) < 0.1 * np.max(np.abs(want))
