"""In-run TracIn: accumulators equal an explicit per-step computation, training is unchanged,
and a run killed mid-epoch resumes to the same accumulators."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbair_jax.data.features import tokenize_columns
from gbair_jax.models.bert import tiny_bert
from gbair_jax.models.classifier import build_classifier
from gbair_jax.train import batches, checkpoints, in_run as in_run_lib
from gbair_jax.train import optimizer as optimizer_lib
from gbair_jax.train.per_example_grads import per_example_grads
from gbair_jax.train.trainer import TrainState, make_logits_fn, make_train_step, train_prompt
from tests.helpers import synthetic_split

LABELS = ("negative", "positive")
BATCH = 16


@pytest.fixture(scope="module")
def setup():
  backbone = tiny_bert()
  spec = build_classifier(backbone, LABELS, prompt_length=4)
  frozen = backbone.load_params()
  tok = lambda s: tokenize_columns(s, backbone.inputs_feature, 12)
  # 40 training rows with batch 16: the last batch of every epoch is padded.
  splits = {"train": tok(synthetic_split(40, 0, corrupt=6)),
            "validation": tok(synthetic_split(20, 1, 1000))}
  return spec, frozen, splits


def _hook(setup, top_k=3, first_query_epoch=1, query_every_steps=0):
  spec, _, splits = setup
  return in_run_lib.InRunTracIn(spec, queries=splits["validation"], top_k=top_k, batch_size=8,
                                first_query_epoch=first_query_epoch,
                                query_every_steps=query_every_steps)


def _train(setup, round_dir, num_epochs, hook=None):
  spec, frozen, splits = setup
  return train_prompt(spec, frozen, splits, str(round_dir), num_epochs=num_epochs,
                      batch_size=BATCH, progress=False, tensorboard=False, in_run=hook)


# (first_query_epoch, query_every_steps): every epoch against the queries at its starting
# prompt; and epoch 1 not counted, the queries taken again every 2 of the epoch's 3 steps.
@pytest.mark.parametrize("first_query_epoch,query_every_steps", [(1, 0), (2, 2)])
def test_accumulators_equal_an_explicit_per_step_computation(setup, tmp_path, first_query_epoch,
                                                             query_every_steps):
  spec, frozen, splits = setup
  epochs = 2
  result = _train(setup, tmp_path / "in_run", epochs,
                  _hook(setup, first_query_epoch=first_query_epoch,
                        query_every_steps=query_every_steps))
  got = result.in_run

  # Replay: plain training steps; at each step the kernel's per-example gradients at the
  # step's prompt, against the query gradients taken at the epoch's starting prompt (and
  # again every `query_every_steps` steps), from epoch `first_query_epoch` on.
  train, queries = splits["train"], splits["validation"]
  n, m = len(train["label"]), len(queries["label"])
  schedule = optimizer_lib.learning_rate_schedule()
  optimizer = optimizer_lib.make_optimizer(schedule)
  prompt = jnp.asarray(spec.initial_prompt(jax.random.PRNGKey(0), frozen))
  state = TrainState(step=jnp.zeros((), jnp.int32), prompt=prompt, opt_state=optimizer.init(prompt))
  step_fn = make_train_step(spec, optimizer)
  logits_fn = make_logits_fn(spec)
  query_batch = {k: queries[k] for k in ("tokens", "mask", "label")}
  query_batch["valid"] = np.ones(m, bool)
  scores = np.zeros((n, m))
  self_influence = np.zeros(n)
  loss = np.zeros((epochs, n))
  top_opponents = []
  for epoch in range(1, epochs + 1):
    counted = epoch >= first_query_epoch
    epoch_scores = np.zeros((n, m))
    order = batches.epoch_order(n, 0, epoch)
    for step, batch in enumerate(batches.iterate_batches(train, BATCH, order,
                                                          keys=("tokens", "mask", "label"))):
      if step == 0 or (query_every_steps and step % query_every_steps == 0):
        query_grads = np.asarray(per_example_grads(spec.example_losses, state.prompt, frozen,
                                                   query_batch), np.float64) * counted
      lr = float(schedule(int(state.step)))
      grads = np.asarray(per_example_grads(spec.example_losses, state.prompt, frozen, batch),
                         np.float64)
      logits = np.asarray(logits_fn(state.prompt, frozen, batch["tokens"], batch["mask"]))
      valid = batch["valid"]
      start = int(state.step) % batches.num_batches(n, BATCH) * BATCH
      rows = order[start:start + valid.sum()]
      epoch_scores[rows] += lr * grads[valid] @ query_grads.T
      self_influence[rows] += lr * np.sum(grads[valid] ** 2, axis=1)
      log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
      loss[epoch - 1, rows] = -log_p[valid, batch["label"][valid]]
      state, _ = step_fn(state, frozen, batch)
    scores += epoch_scores
    top_opponents.append(np.argsort(epoch_scores, axis=0, kind="stable")[:3].T
                         if counted else np.full((m, 3), -1))  # [M, 3]; -1: not counted

  np.testing.assert_allclose(got.self_influence, self_influence, rtol=2e-4, atol=1e-9)
  np.testing.assert_allclose(got.mean_influence, scores.mean(1), rtol=2e-3, atol=1e-7)
  by_class = np.stack([scores[:, queries["label"] == c].sum(1) for c in range(2)], axis=1)
  np.testing.assert_allclose(got.class_influence, by_class, rtol=2e-3, atol=1e-7)
  np.testing.assert_allclose(got.dynamics.loss, loss, rtol=1e-4, atol=1e-6)
  # The trainer's last evaluation is the validation split at the final prompt.
  np.testing.assert_allclose(
      result.validation_logits,
      np.asarray(logits_fn(state.prompt, frozen, queries["tokens"], queries["mask"])),
      rtol=1e-4, atol=1e-5)
  assert abs(got.mean_influence).max() > 0 and (got.dynamics.loss > 0).all()
  # Margins and p(label) agree with the recorded losses (two classes: p = exp(-loss)).
  np.testing.assert_allclose(got.dynamics.p_label, np.exp(-got.dynamics.loss), rtol=1e-5)
  assert ((got.dynamics.margin > 0) == (got.dynamics.p_label > 0.5)).all()
  # Per-epoch top-3 opponents per query: the same rows as the explicit ranking.
  assert got.opponent_positions.shape == (epochs, m, 3)
  for e in range(epochs):
    np.testing.assert_array_equal(np.sort(got.opponent_positions[e], 1),
                                  np.sort(top_opponents[e], 1))
  np.testing.assert_array_equal(got.query_ids, queries["example_id"])


def test_training_with_per_example_gradients_ends_at_the_plain_prompt(setup, tmp_path):
  plain = _train(setup, tmp_path / "plain", 3)
  in_run = _train(setup, tmp_path / "in_run", 3, _hook(setup))
  assert in_run.in_run is not None and plain.in_run is None
  # Bitwise: Adam turns any float difference in the update into a different run.
  np.testing.assert_array_equal(in_run.prompt, plain.prompt)
  for a, b in zip(plain.metrics["epochs"], in_run.metrics["epochs"]):
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    # The fused query pass is the validation evaluation: the same metrics.
    assert a["validation"] == pytest.approx(b["validation"], rel=1e-5, abs=1e-6)


def test_resume_after_a_kill_mid_epoch_gives_the_same_accumulators(setup, tmp_path, monkeypatch):
  # The gin defaults' first_query_epoch (2), and refreshes within the epoch the run resumes in.
  hook = lambda: _hook(setup, first_query_epoch=2, query_every_steps=2)
  full = _train(setup, tmp_path / "full", 3, hook()).in_run
  save_epoch = checkpoints.save_epoch

  def killed_in_epoch_2(mngr, epoch, *args, **kw):
    if epoch == 2:  # epoch 2's steps and its accumulator file ran; its checkpoint did not
      raise KeyboardInterrupt
    return save_epoch(mngr, epoch, *args, **kw)

  monkeypatch.setattr(checkpoints, "save_epoch", killed_in_epoch_2)
  with pytest.raises(KeyboardInterrupt):
    _train(setup, tmp_path / "killed", 3, hook())
  monkeypatch.setattr(checkpoints, "save_epoch", save_epoch)
  resumed = _train(setup, tmp_path / "killed", 3, hook()).in_run
  assert np.abs(full.mean_influence).max() > 0
  for name in ("self_influence", "mean_influence", "class_influence", "opponent_scores",
               "proponent_positions"):
    np.testing.assert_allclose(getattr(resumed, name), getattr(full, name), rtol=1e-6, atol=1e-9)
  for name in in_run_lib.DYNAMICS:
    np.testing.assert_allclose(getattr(resumed.dynamics, name), getattr(full.dynamics, name),
                               rtol=1e-6, atol=1e-9)


def test_self_influence_only_and_bad_source(setup, tmp_path):
  spec, _, splits = setup
  hook = in_run_lib.InRunTracIn(spec)
  result = _train(setup, tmp_path / "r", 1, hook).in_run
  assert result.mean_influence is None and (result.self_influence > 0).all()
  from gbair_jax.errors import UserError
  with pytest.raises(UserError, match="tracin.source"):
    in_run_lib.tracin_settings(source="bogus")
  with pytest.raises(UserError, match="tracin.query_every_steps must be >= 0"):
    in_run_lib.tracin_settings(query_every_steps=-1)
  # No epoch would count against the queries: refused before anything trains.
  with pytest.raises(UserError, match="tracin.first_query_epoch=2 but training runs 1 epoch"):
    _train(setup, tmp_path / "one_epoch", 1, _hook(setup, first_query_epoch=2))
  assert not os.path.exists(tmp_path / "one_epoch" / "checkpoints")


@pytest.mark.parametrize("strategy", ["tracin_opponents", "aum"])
def test_recovery_round_scores_from_the_training_run(setup, tmp_path, monkeypatch, strategy):
  import gin
  from gbair_jax.data.dataset import LabeledData
  from gbair_jax.data.ledger import read_ledger
  from gbair_jax.influence import tracin
  from gbair_jax.recovery import loop, registry
  from gbair_jax.train.experiment import Experiment
  spec, frozen, _ = setup
  data = LabeledData(task="synthetic", label_names=LABELS, splits={
      "train": synthetic_split(40, 0, corrupt=8), "validation": synthetic_split(16, 1, 1000),
      "test": synthetic_split(16, 2, 2000)})
  exp = Experiment(data=data, spec=spec, frozen=frozen, sequence_length=12)
  gin.parse_config("train_prompt.num_epochs = 2\ntrain_prompt.batch_size = 16\n"
                   "train_prompt.tensorboard = False\nselection_size.select_count = 5\n"
                   "tracin.source = 'in_run'")

  def no_checkpoint_pass(*args, **kw):
    raise AssertionError("in_run must not run a checkpoint scoring pass")

  monkeypatch.setattr(tracin, "tracin_scores", no_checkpoint_pass)
  seen = {}
  strategy_fn = registry.STRATEGIES[strategy]

  def spy(ctx, **kw):
    seen["ctx"] = ctx
    return strategy_fn(ctx, **kw)

  monkeypatch.setitem(registry.STRATEGIES, strategy, spy)
  passes = []  # the loop's own forward passes (the trainer's evaluations are not these)
  predict_logits = loop.predict_logits
  monkeypatch.setattr(loop, "predict_logits",
                      lambda *a, **kw: passes.append(a[3]) or predict_logits(*a, **kw))
  out = str(tmp_path / "run")
  report = loop.run(out, num_rounds=1, strategy=strategy, references=(),
                    experiment=exp, progress=False)
  assert [r["selected"] for r in report["rounds"]] == [5, 0]
  assert len(read_ledger(f"{out}/ledger.jsonl")) == 5
  ctx = seen["ctx"]
  assert ctx.dynamics.margin.shape == (2, 40)
  if strategy == "tracin_opponents":
    assert ctx.in_run.mean_influence.shape == (40,)
  # One forward pass over the training rows at the final prompt (the residual and the
  # action read it); validation's logits are the trainer's last evaluation.
  assert [len(arrays["label"]) for arrays in passes] == [40]
  assert ctx.validation_logits.shape == (16, 2)
  assert sorted(os.listdir(f"{out}/round_0/in_run")) == ["epoch_1.npz", "epoch_2.npz"]
  assert not os.path.exists(f"{out}/round_1/in_run"), "the last round only trains"


def test_query_pass_split_over_eight_devices_equals_one_device(setup):
  """The query pass splits its batches over the mesh's `data` axis (8 fake CPU devices,
  batches of 8 queries with a padded last one) and returns what one device computes,
  replicated on the mesh."""
  from gbair_jax.runtime import mesh as mesh_lib
  spec, frozen, _ = setup
  prompt = np.asarray(spec.initial_prompt(jax.random.PRNGKey(0), frozen))
  hook = _hook(setup).setup(40, 2)
  one, one_logits = hook.query_pass(prompt, frozen)
  mesh = mesh_lib.make_mesh()
  assert mesh_lib.data_size(mesh) == 8
  eight, eight_logits = hook.query_pass(prompt, frozen, mesh)
  np.testing.assert_allclose(eight_logits, one_logits, rtol=1e-5, atol=1e-6)
  for name in ("mean", "class_sums", "grads"):
    assert eight[name].sharding.is_fully_replicated and eight[name].sharding.mesh == mesh, name
    np.testing.assert_allclose(np.asarray(eight[name]), np.asarray(one[name]),
                               rtol=1e-4, atol=1e-6, err_msg=name)


def test_in_run_training_on_eight_devices_equals_one_device(setup, tmp_path):
  """The in-run step on a mesh (8 fake CPU devices, batches of 16 split 2 per device, the
  last one padded), with an idle first epoch and refreshes within the next, accumulates
  what one device does."""
  from gbair_jax.runtime import mesh as mesh_lib
  spec, frozen, splits = setup
  mesh = mesh_lib.make_mesh()
  assert mesh_lib.data_size(mesh) == 8
  hook = lambda: _hook(setup, first_query_epoch=2, query_every_steps=2)
  one = _train(setup, tmp_path / "one", 2, hook())
  eight = train_prompt(spec, frozen, splits, str(tmp_path / "eight"), num_epochs=2,
                       batch_size=BATCH, progress=False, tensorboard=False, in_run=hook(),
                       mesh=mesh)
  np.testing.assert_allclose(eight.prompt, one.prompt, rtol=1e-4, atol=1e-6)
  assert np.abs(one.in_run.mean_influence).max() > 0
  for name in ("self_influence", "mean_influence", "class_influence", "opponent_scores"):
    np.testing.assert_allclose(getattr(eight.in_run, name), getattr(one.in_run, name),
                               rtol=2e-3, atol=1e-7, err_msg=name)
  # Epoch 1 did not count: its top-k slots keep their sentinels on both.
  assert (eight.in_run.opponent_positions[0] == -1).all()
  np.testing.assert_allclose(eight.validation_logits, one.validation_logits, rtol=1e-4,
                             atol=1e-5)
