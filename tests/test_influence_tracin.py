"""TracInCP scores and streamed reductions, checked against closed forms and the full matrix.

Logistic regression behind the engine's loss contract has gradient (sigma(w.x + b) - y) x,
so TracInCP(z, z') = sum_c lr_c (sigma_c(x) - y)(sigma_c(x') - y') x.x' exactly.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbair_jax.errors import UserError
from gbair_jax.influence import tracin
from gbair_jax.influence.projection import RandomProjection
from tests.helpers import logistic_loss

FEATURES, BIAS = 12, 0.25  # prompt [3, 4] flattens to the 12 logistic weights




def make_examples(count, seed, first_id=0):
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(count, FEATURES)).astype(np.float32)
  features *= rng.uniform(0.2, 3.0, size=(count, 1)).astype(np.float32)  # varied norms
  labels = rng.integers(0, 2, count).astype(np.int32)
  ids = (first_id + np.arange(count, dtype=np.int64)) * 7_919 + 2**35  # beyond int32
  return features, labels, ids


def to_batches(examples, batch_size, garbage=0.0):
  """Fixed-size batches, the last padded with `garbage` features and valid=False."""
  features, labels, ids = examples
  batches = []
  for start in range(0, len(ids), batch_size):
    rows = slice(start, start + batch_size)
    pad = batch_size - len(ids[rows])
    batches.append({
        "features": np.concatenate([features[rows],
                                    np.full((pad, FEATURES), garbage, np.float32)]),
        "label": np.concatenate([labels[rows], np.zeros(pad, np.int32)]),
        "example_id": np.concatenate([ids[rows], np.full(pad, -1, np.int64)]),
        "valid": np.arange(batch_size) < batch_size - pad,
        "text": np.array(["unused"] * batch_size),  # strings must not reach the device
    })
  return batches


def make_checkpoints(seed=3):
  rng = np.random.default_rng(seed)
  return [(rng.normal(size=(3, 4)).astype(np.float32) * 0.5, lr) for lr in (0.5, 0.3, 0.1)]


FROZEN = {"bias": np.float32(BIAS)}


def analytic_gradients(examples, checkpoints):
  """[C, N, d] closed-form gradients in float64."""
  features, labels, _ = examples
  x = features.astype(np.float64)
  grads = []
  for prompt, _ in checkpoints:
    sigma = 1 / (1 + np.exp(-(x @ prompt.reshape(-1).astype(np.float64) + BIAS)))
    grads.append((sigma - labels)[:, None] * x)
  return np.stack(grads)


def analytic_scores(train, queries, checkpoints, normalize=False, matrix=None):
  g_train, g_query = analytic_gradients(train, checkpoints), analytic_gradients(queries,
                                                                                checkpoints)
  if matrix is not None:
    g_train, g_query = g_train @ matrix, g_query @ matrix
  if normalize:
    g_train = g_train / np.linalg.norm(g_train, axis=2, keepdims=True)
    g_query = g_query / np.linalg.norm(g_query, axis=2, keepdims=True)
  lrs = np.array([lr for _, lr in checkpoints])
  return np.einsum("c,cnd,cmd->nm", lrs, g_train, g_query)


def assert_close(got, want, rtol=1e-5):
  assert got.shape == want.shape
  assert np.max(np.abs(got - want)) <= rtol * np.max(np.abs(want))


TRAIN, QUERIES = make_examples(29, seed=1), make_examples(5, seed=2, first_id=1000)


def score(batch_size=8, query_batch_size=4, garbage=0.0, **kwargs):
  kwargs.setdefault("top_k", 4)
  return tracin.tracin_scores(logistic_loss, make_checkpoints(), FROZEN,
                              to_batches(TRAIN, batch_size, garbage),
                              to_batches(QUERIES, query_batch_size), keep_scores=True,
                              progress=False, **kwargs)


@pytest.mark.parametrize("method", ["copies", "vmap"])
def test_scores_match_closed_form_logistic_tracin(method):
  result = score(options=tracin.GradientOptions(method=method))
  np.testing.assert_array_equal(result.example_ids, TRAIN[2])
  np.testing.assert_array_equal(result.query_ids, QUERIES[2])
  assert_close(result.scores, analytic_scores(TRAIN, QUERIES, make_checkpoints()))
  lrs = np.array([lr for _, lr in make_checkpoints()])
  self_influence = np.einsum("c,cnd->n", lrs, analytic_gradients(TRAIN, make_checkpoints())**2)
  assert_close(result.self_influence, self_influence)


def test_streamed_reductions_equal_those_of_the_full_matrix():
  result = score(top_k=4)
  scores = analytic_scores(TRAIN, QUERIES, make_checkpoints())
  ids = TRAIN[2]
  opponents = np.argsort(scores, axis=0)[:4].T  # [M, k], most negative first
  proponents = np.argsort(-scores, axis=0)[:4].T
  np.testing.assert_array_equal(result.opponent_ids, ids[opponents])
  np.testing.assert_array_equal(result.proponent_ids, ids[proponents])
  assert_close(result.opponent_scores, np.take_along_axis(scores.T, opponents, axis=1))
  assert_close(result.proponent_scores, np.take_along_axis(scores.T, proponents, axis=1))
  assert_close(result.negative_influence, np.minimum(scores, 0).sum(axis=1))
  assert_close(result.mean_influence, scores.mean(axis=1))
  count = np.zeros(len(ids), int)
  for query, rows in enumerate(opponents):
    for row in rows:
      count[row] += scores[row, query] < 0
  np.testing.assert_array_equal(result.opponent_count, count)
  assert count.sum() > 0  # the problem has opponents, so the count is really tested


def test_padded_rows_are_ignored_whatever_they_hold():
  # top_k = N: every list ranks the whole set, so one padded row in a list would show.
  reference = score(batch_size=29, top_k=29)  # one batch, no padding
  # Lists of everyone: an example opposes exactly the queries it has a negative score on.
  np.testing.assert_array_equal(reference.opponent_count, (reference.scores < 0).sum(axis=1))
  for batch_size in (4, 6):
    padded = score(batch_size=batch_size, garbage=np.nan, top_k=29)
    np.testing.assert_array_equal(padded.example_ids, reference.example_ids)
    assert_close(padded.scores, reference.scores)
    assert_close(padded.negative_influence, reference.negative_influence)
    np.testing.assert_array_equal(padded.opponent_ids, reference.opponent_ids)
    np.testing.assert_array_equal(padded.proponent_ids, reference.proponent_ids)
    np.testing.assert_array_equal(padded.opponent_count, reference.opponent_count)
    assert np.all(np.isfinite(padded.scores))


def test_cosine_tracin_normalises_each_checkpoint_gradient():
  result = score(options=tracin.GradientOptions(normalize=True))
  assert_close(result.scores, analytic_scores(TRAIN, QUERIES, make_checkpoints(),
                                              normalize=True))
  # Raw self-influence is kept (a cosine self-influence would be the constant sum of lrs).
  assert np.ptp(result.self_influence) > 0.1


@pytest.mark.parametrize("max_matrix_bytes", [2**20, 0])  # whole matrix, then block by block
def test_projected_scores_use_the_seeded_map(max_matrix_bytes):
  projection = RandomProjection(dim=6, seed=11, block_rows=5, max_matrix_bytes=max_matrix_bytes)
  result = score(options=tracin.GradientOptions(projection=projection, normalize=True))
  matrix = np.asarray(projection.matrix(FEATURES), np.float64)
  assert_close(result.scores, analytic_scores(TRAIN, QUERIES, make_checkpoints(),
                                              normalize=True, matrix=matrix))


def test_top_k_larger_than_the_training_set_is_trimmed():
  result = score(top_k=50)
  assert result.opponent_ids.shape == result.proponent_ids.shape == (5, 29)
  assert np.all(np.isfinite(result.opponent_scores))
  assert set(result.opponent_ids[0]) == set(TRAIN[2])


def test_self_influence_and_precomputed_query_gradients():
  checkpoints = make_checkpoints()
  ids, scores = tracin.self_influence(logistic_loss, checkpoints, FROZEN,
                                      to_batches(TRAIN, 8), progress=False)
  np.testing.assert_array_equal(ids, TRAIN[2])
  lrs = np.array([lr for _, lr in checkpoints])
  assert_close(scores, np.einsum("c,cnd->n", lrs, analytic_gradients(TRAIN, checkpoints)**2))
  queries = tracin.query_gradients(logistic_loss, checkpoints, FROZEN, to_batches(QUERIES, 4))
  assert queries.features.shape == (3, 5, FEATURES)
  result = tracin.tracin_scores(logistic_loss, checkpoints, FROZEN, iter(to_batches(TRAIN, 8)),
                                queries, keep_scores=True, progress=False)
  assert_close(result.scores, analytic_scores(TRAIN, QUERIES, checkpoints))


def test_the_full_matrix_is_only_kept_when_asked():
  result = tracin.tracin_scores(logistic_loss, make_checkpoints(), FROZEN, to_batches(TRAIN, 8),
                                to_batches(QUERIES, 4), progress=False)
  assert result.scores is None and result.self_influence.shape == (29,)


def test_bad_input_is_a_user_error():
  batches = to_batches(TRAIN, 8)
  with pytest.raises(UserError, match="checkpoint"):
    tracin.tracin_scores(logistic_loss, [], FROZEN, batches, batches, progress=False)
  no_ids = [{k: v for k, v in b.items() if k != "example_id"} for b in batches]
  with pytest.raises(UserError, match="example_id"):
    tracin.tracin_scores(logistic_loss, make_checkpoints(), FROZEN, batches, no_ids,
                         progress=False)
  with pytest.raises(UserError, match="top_k"):
    tracin.tracin_scores(logistic_loss, make_checkpoints(), FROZEN, batches, batches, top_k=0,
                         progress=False)
