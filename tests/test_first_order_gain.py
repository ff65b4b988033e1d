"""first_order_gain: the Gauss-Newton solve, the AUC surrogate's gradient, the gain against a
brute-force computation on a tiny model, and a round that changes only predicted gains."""
import os

import gin
import jax
import numpy as np
import pytest

from gbair_jax.errors import UserError
from gbair_jax.influence.per_example_grads import per_example_grads
from gbair_jax.recovery import first_order_gain, loop
from gbair_jax.recovery.context import RoundContext
from gbair_jax.recovery.gradient_vote import MarginLoss
from gbair_jax.train.trainer import predict_logits
from tests.helpers import (SMALL_TRAINING_GIN, synthetic_split, synthetic_three_class_split,
                           tiny_experiment)


@pytest.fixture(autouse=True)
def small_gin():  # after conftest's clean_gin, which clears gin around every test
  gin.parse_config(SMALL_TRAINING_GIN + "selection_size.select_count = 6")


@pytest.mark.parametrize("rows,dim", [(40, 12), (12, 40)])  # direct, then Woodbury
def test_gauss_newton_solver_applies_the_damped_inverse(rows, dim):
  rng = np.random.default_rng(rows)
  u, weights, a = rng.normal(size=(rows, dim)), rng.uniform(0, 0.25, rows), rng.normal(size=dim)
  solver = first_order_gain.GaussNewtonSolver(u, weights, damping=0.5)
  gauss_newton = (u * weights[:, None]).T @ u / rows
  lam = 0.5 * np.trace(gauss_newton) / dim
  assert solver.direct == (dim <= rows)
  np.testing.assert_allclose(solver.solve(a),
                             np.linalg.solve(gauss_newton + lam * np.eye(dim), a), rtol=1e-8)


def test_auc_surrogate_gradient_matches_finite_differences():
  rng = np.random.default_rng(0)
  u, m0 = rng.normal(size=(9, 5)), rng.normal(size=9)
  is_high = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0], bool)

  def surrogate(delta):  # margins linear in a parameter step: m = m0 + u delta
    m = m0 + u @ delta
    diff = m[is_high][:, None] - m[~is_high][None, :]
    return np.mean(-np.log1p(np.exp(-diff)))

  eps, eye = 1e-6, np.eye(5)
  numeric = np.array([(surrogate(eps * e) - surrogate(-eps * e)) / (2 * eps) for e in eye])
  np.testing.assert_allclose(first_order_gain.auc_surrogate_gradient(u, m0, is_high), numeric,
                             rtol=1e-6, atol=1e-9)
  assert not first_order_gain.auc_surrogate_gradient(u, m0, np.ones(9, bool)).any()


def test_gains_match_a_brute_force_computation():
  """Three classes: each example's margin towards its most likely other class, H built
  explicitly from every row's own margin gradient, A from the pair's validation examples."""
  exp = tiny_experiment(("negative", "neutral", "positive"), synthetic_three_class_split)
  tokenized = exp.tokenized_splits()
  train, validation = tokenized["train"], tokenized["validation"]
  base = np.asarray(exp.spec.initial_prompt(jax.random.PRNGKey(0), exp.frozen))
  prompt = base + 0.3 * np.random.default_rng(0).normal(size=base.shape).astype(base.dtype)
  train_logits = predict_logits(exp.spec, prompt, exp.frozen, train)
  validation_logits = predict_logits(exp.spec, prompt, exp.frozen, validation)
  ctx = RoundContext(spec=exp.spec, frozen=exp.frozen, train=train, validation=validation,
                     checkpoints=[(prompt, 1.0)], final_prompt=prompt, train_logits=train_logits,
                     validation_logits=validation_logits, seed=0, batch_size=8, progress=False)
  gains = first_order_gain.first_order_gains(ctx, damping=0.3)

  cache = {}

  def margin_gradient(arrays, i, low, high):
    key = (id(arrays), int(i), low, high)
    if key in cache:
      return cache[key]
    batch = {"tokens": arrays["tokens"][[i]], "mask": arrays["mask"][[i]],
             "valid": np.ones(1, bool), "margin_low": np.array([low], np.int32),
             "margin_high": np.array([high], np.int32)}
    cache[key] = np.asarray(per_example_grads(MarginLoss(exp.spec), prompt, exp.frozen, batch),
                            np.float64)[0]
    return cache[key]

  pairs, us, weights = [], [], []
  for i, label in enumerate(train["label"]):
    logits = train_logits[i].astype(np.float64)
    other = int(np.argmax(np.where(np.arange(3) == label, -np.inf, logits)))
    low, high = min(label, other), max(label, other)
    pairs.append((low, high, 1.0 if other == high else -1.0))
    us.append(margin_gradient(train, i, low, high))
    q = 1.0 / (1.0 + np.exp(-(logits[high] - logits[low])))
    weights.append(q * (1 - q))
  u = np.array(us)
  gauss_newton = (u * np.array(weights)[:, None]).T @ u / len(u)
  hessian = gauss_newton + 0.3 * np.trace(gauss_newton) / u.shape[1] * np.eye(u.shape[1])
  for i, (low, high, sign) in enumerate(pairs):
    voters = np.flatnonzero(np.isin(validation["label"], [low, high]))
    margins = validation_logits[voters, high] - validation_logits[voters, low]
    grad_a = 0.0
    count = 0
    for a in voters[validation["label"][voters] == high]:
      for b in voters[validation["label"][voters] == low]:
        ma, mb = margins[voters == a][0], margins[voters == b][0]
        grad_a = grad_a + (margin_gradient(validation, a, low, high)
                           - margin_gradient(validation, b, low, high)) / (1 + np.exp(ma - mb))
        count += 1
    expected = sign * u[i] @ np.linalg.solve(hessian, grad_a / count)
    np.testing.assert_allclose(gains[i], expected, rtol=2e-3, atol=1e-7)


def test_a_round_changes_only_examples_with_a_predicted_gain(tmp_path):
  out = str(tmp_path / "run")
  report = loop.run(out, num_rounds=1, strategy="first_order_gain", references=(),
                    experiment=tiny_experiment(("negative", "positive"), synthetic_split),
                    progress=False)
  scores = np.load(os.path.join(out, "round_0", "scores.npz"))["score"]
  positive = np.isfinite(scores)
  assert 0 < positive.sum() < len(scores)
  assert np.all(scores[positive] > 0)
  assert report["rounds"][0]["selected"] == min(6, int(positive.sum()))


def test_bad_damping_is_named(tmp_path):
  gin.bind_parameter("first_order_gain_strategy.damping", 0.0)
  with pytest.raises(UserError, match=r"first_order_gain_strategy.damping = 0.0: must be"):
    loop.run(str(tmp_path / "run"), num_rounds=1, strategy="first_order_gain", references=(),
             experiment=tiny_experiment(("negative", "positive"), synthetic_split), progress=False)
