"""Seed ensembles (train_prompt.ensemble_size): independent members, member 0 the single
run, mean-probability predictions, resumable, the same on an 8-device mesh, bad sizes refused."""
import jax
import numpy as np
import pytest

from gbair_jax.errors import UserError
from gbair_jax.runtime import mesh as mesh_lib
from gbair_jax.train import checkpoints, ensemble
from gbair_jax.train.trainer import predict_logits
from tests.helpers import synthetic_split
# The trainer tests' tiny classifier and splits, and their train_prompt call.
from tests.test_train import LABELS, _train, setup  # noqa: F401  pylint: disable=unused-import


def test_members_are_independent_runs_and_member_0_is_the_single_run(setup, tmp_path):
  single = _train(setup, tmp_path / "single", seed=3)
  trio = _train(setup, tmp_path / "trio", seed=3, ensemble_size=3)
  assert trio.prompt.shape == (3,) + single.prompt.shape
  # Same initial prompt and batches as the single run: the same training, member by member.
  np.testing.assert_allclose(trio.prompt[0], single.prompt, rtol=1e-5, atol=1e-6)
  # The others start elsewhere and see other orders: they end elsewhere.
  assert not np.allclose(trio.prompt[1], trio.prompt[0], atol=1e-3)
  assert not np.allclose(trio.prompt[2], trio.prompt[1], atol=1e-3)
  # A member's training does not depend on its neighbours: a pair gives the same members.
  pair = _train(setup, tmp_path / "pair", seed=3, ensemble_size=2)
  np.testing.assert_allclose(pair.prompt, trio.prompt[:2], rtol=1e-5, atol=1e-6)


def test_ensemble_predicts_the_members_mean_probability(setup, tmp_path):
  spec, frozen, splits = setup
  trio = _train(setup, tmp_path / "trio", ensemble_size=3)
  members = [predict_logits(spec, p, frozen, splits["test"]) for p in trio.prompt]
  mean_prob = np.mean([jax.nn.softmax(m, -1) for m in members], axis=0)
  got = predict_logits(spec, trio.prompt, frozen, splits["test"])
  np.testing.assert_allclose(np.exp(got), mean_prob, rtol=1e-5, atol=1e-6)
  # The reported metrics are the ensemble's, not a member's.
  from gbair_jax.train.metrics import classification_metrics
  expected = classification_metrics(got, splits["test"]["label"],
                                    threshold=trio.metrics["test"]["threshold"])
  assert trio.metrics["test"]["auc"] == pytest.approx(expected["auc"])
  np.testing.assert_allclose(trio.validation_logits,
                             predict_logits(spec, trio.prompt, frozen, splits["validation"]),
                             rtol=1e-5, atol=1e-6)


def test_ensemble_resumes_and_tracin_reads_member_0(setup, tmp_path):
  full = _train(setup, tmp_path / "full", num_epochs=3, ensemble_size=2)
  _train(setup, tmp_path / "killed", num_epochs=1, ensemble_size=2)
  resumed = _train(setup, tmp_path / "killed", num_epochs=3, ensemble_size=2)
  np.testing.assert_allclose(resumed.prompt, full.prompt, rtol=1e-6, atol=1e-7)
  saved = checkpoints.load_prompt(str(tmp_path / "full"), 3)
  np.testing.assert_array_equal(saved, full.prompt)  # the checkpoint holds every member
  tracin = checkpoints.load_tracin_checkpoints(str(tmp_path / "full"))
  assert len(tracin) == 3
  np.testing.assert_array_equal(tracin[-1][0], full.prompt[0])
  np.testing.assert_array_equal(ensemble.first_member(full.prompt), full.prompt[0])


def test_ensemble_on_8_devices_equals_one_device(setup, tmp_path):
  spec, frozen, splits = setup
  assert jax.device_count() == 8
  mesh = mesh_lib.make_mesh()  # data = 8; batch 16 splits into 2 rows per device
  one = _train(setup, tmp_path / "one", ensemble_size=2, mesh=mesh_lib.single_device_mesh())
  eight = _train(setup, tmp_path / "eight", ensemble_size=2, mesh=mesh)
  np.testing.assert_allclose(eight.prompt, one.prompt, rtol=1e-4, atol=1e-5)
  assert eight.metrics["test"]["auc"] == pytest.approx(one.metrics["test"]["auc"], abs=1e-6)


def test_bad_ensemble_sizes_are_refused_before_any_file(setup, tmp_path):
  for bad in (0, -1, 2.0, True):
    with pytest.raises(UserError, match=r"train_prompt\.ensemble_size"):
      _train(setup, tmp_path / "bad", ensemble_size=bad)
  assert not (tmp_path / "bad").exists()
  # A warm start must keep the run's ensemble size.
  single = _train(setup, tmp_path / "single", num_epochs=1)
  with pytest.raises(UserError, match=r"ensemble_size=2: the warm-start prompt has shape"):
    _train(setup, tmp_path / "warm", ensemble_size=2, initial_prompt=single.prompt)
  # In-run TracIn follows one prompt: refused before its hook is touched.
  with pytest.raises(UserError, match=r"ensemble_size=2 cannot be combined with tracin.source"):
    _train(setup, tmp_path / "in_run", ensemble_size=2, in_run=object())
  assert not (tmp_path / "warm").exists() and not (tmp_path / "in_run").exists()


@pytest.mark.parametrize("retrain", ["fresh", "warm_start"])
def test_gated_rounds_of_ensembles(tmp_path, retrain):
  """A whole gated run with 2-member ensembles: the gate, the metrics and the strategy's
  logits are the ensemble's; TracIn reads member 0; warm starts carry every member."""
  import gin  # pylint: disable=g-import-not-at-top
  from gbair_jax.recovery import gate as gate_lib  # pylint: disable=g-import-not-at-top
  from gbair_jax.recovery import loop  # pylint: disable=g-import-not-at-top
  from tests.helpers import tiny_experiment  # pylint: disable=g-import-not-at-top
  gin.parse_config("train_prompt.num_epochs = 1\ntrain_prompt.batch_size = 16\n"
                   "train_prompt.tensorboard = False\ntrain_prompt.ensemble_size = 2\n"
                   "selection_size.select_count = 6\nGateConfig.fraction = 0.5\n"
                   "tracin_opponents.top_k = 8\n")
  experiment = tiny_experiment(LABELS, synthetic_split, num_train=48, corrupt=12)
  out = tmp_path / "run"
  report = loop.run(str(out), num_rounds=1, strategy="tracin_opponents", gate=True,
                    train_on_validation=True, retrain=retrain, references=("clean",),
                    experiment=experiment, progress=False)
  assert report["rounds"][0]["selected"] == 6
  for r in (0, 1):
    prompt = checkpoints.load_prompt(str(out / f"round_{r}"), 1)
    assert prompt.shape[:2] == (2, 4)
    saved = np.load(out / f"round_{r}" / loop.GATE_LOGITS_FILE)
    # The gate judged the ensemble: the saved logits are its mean probabilities.
    validation = experiment.tokenized_splits()["validation"]
    row_of = {int(i): n for n, i in enumerate(validation["example_id"])}
    gate_rows = {k: v[[row_of[int(i)] for i in saved["example_id"]]]
                 for k, v in validation.items()}
    assert len(saved["example_id"]) == 16
    expected = predict_logits(experiment.spec, prompt, experiment.frozen, gate_rows)
    np.testing.assert_allclose(saved["logits"], expected, rtol=1e-5, atol=1e-5)
    assert report["rounds"][r]["gate"]["value"] == pytest.approx(
        gate_lib.gate_value(expected, {"label": saved["label"]}, gate_lib.GateConfig()))
  # With warm_start the clean reference trains in as many stages as the run (1 + 1 here).
  clean_dir = (out / "references" / "clean_with_validation" if retrain == "fresh" else
               out / "references" / "clean_with_validation_warm_start" / "stage_1")
  clean = checkpoints.load_prompt(str(clean_dir), 1)
  assert clean.shape[:2] == (2, 4) and "clean" in report["references"]
