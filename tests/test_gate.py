"""Gated rounds (recovery/gate.py): a round whose model is worse on the gate slice is rolled
back in the ledger, the budget halves, and the run's result is the last accepted round."""
import os

import gin
import numpy as np
import pytest

from gbair_jax.data.ledger import apply_ledger, read_ledger
from gbair_jax.errors import UserError
from gbair_jax.recovery import gate as gate_lib
from gbair_jax.recovery import loop
from tests.test_recovery import experiment  # noqa: F401  pylint: disable=unused-import


@pytest.fixture(autouse=True)
def small_gin():
  gin.clear_config()
  gin.parse_config("train_prompt.num_epochs = 1\ntrain_prompt.batch_size = 16\n"
                   "train_prompt.tensorboard = False\nselection_size.select_count = 6\n"
                   "GateConfig.fraction = 0.5\n")
  yield
  gin.clear_config()


def _scripted_gate(monkeypatch, values):
  """The gate reads `values` round after round instead of the model's metric (and a
  standard error of 0: the real one would read the script on every resample)."""
  seen = iter(values)
  monkeypatch.setattr(gate_lib, "gate_value", lambda logits, gate, config: next(seen))
  monkeypatch.setattr(gate_lib, "difference_noise", lambda *args: 0.0)


def test_split_gate_is_stratified_disjoint_and_seeded():
  validation = {"example_id": np.arange(40), "label": np.array([0] * 30 + [1] * 10)}
  rest, gate = gate_lib.split_gate(validation, gate_lib.GateConfig(fraction=0.3, seed=1))
  assert sorted(np.concatenate([rest["example_id"], gate["example_id"]]).tolist()) == list(range(40))
  assert np.bincount(gate["label"]).tolist() == [9, 3]
  again, _ = gate_lib.split_gate(validation, gate_lib.GateConfig(fraction=0.3, seed=1))
  np.testing.assert_array_equal(rest["example_id"], again["example_id"])
  other, _ = gate_lib.split_gate(validation, gate_lib.GateConfig(fraction=0.3, seed=2))
  assert not np.array_equal(rest["example_id"], other["example_id"])


def test_rejected_rounds_are_rolled_back_and_the_budget_halves(experiment, tmp_path, monkeypatch):
  _scripted_gate(monkeypatch, [0.8, 0.7, 0.6])  # every later model is worse
  out = str(tmp_path / "run")
  report = loop.run(out, num_rounds=2, strategy="loss", gate=True, references=(),
                    experiment=experiment, progress=False)
  rounds = report["rounds"]
  assert [r["gate"]["accepted"] for r in rounds] == [True, False, False]
  assert [r["selected"] for r in rounds] == [6, 3, 0]
  assert [r["budget"] for r in rounds] == [6, 3, 1]
  assert report["final_round"] == 0
  ledger = read_ledger(os.path.join(out, "ledger.jsonl"))
  by_round = {r: [e for e in ledger if e.round == r] for r in range(3)}
  # Round 1 undoes round 0's six changes, then picks three others from round 0's scores.
  undo = [e for e in by_round[1] if e.strategy == gate_lib.GATE_ROLLBACK]
  assert sorted((e.example_id, e.old_label, e.new_label) for e in undo) == sorted(
      (e.example_id, e.new_label, e.old_label) for e in by_round[0])
  fresh = [e for e in by_round[1] if e.strategy != gate_lib.GATE_ROLLBACK]
  assert len(fresh) == 3 and not {e.example_id for e in fresh} & {e.example_id for e in undo}
  # Round 2 undoes those three: the ledger ends at round 0's labels, the result's labels.
  assert sorted(e.example_id for e in by_round[2]) == sorted(e.example_id for e in fresh)
  train = experiment.data.splits["train"]
  np.testing.assert_array_equal(apply_ledger(train, ledger, before_round=3)["label"], train["label"])
  assert rounds[-1]["wrong_labels"] == int(np.sum(train["label"] != train["original_label"]))
  # report.md says which of the changes the final model did not train on.
  fixed = report["num_corrupted"] - rounds[-1]["corrupted_remaining"]
  assert (f"The gate rolled back 9 of them; the final model (round 0) trained on the rest, "
          f"which fix {fixed} of the {report['num_corrupted']} corrupted labels."
          in open(os.path.join(out, "report.md")).read())
  # A rerun reuses every round, gate state included.
  again = loop.run(out, num_rounds=2, strategy="loss", gate=True, references=(),
                   experiment=experiment, progress=False)
  assert again["final_round"] == 0 and again["rounds"] == rounds


def test_accepted_rounds_keep_their_changes(experiment, tmp_path, monkeypatch):
  _scripted_gate(monkeypatch, [0.6, 0.6, 0.7])  # equal counts as not worse
  report = loop.run(str(tmp_path / "run"), num_rounds=2, strategy="loss", gate=True,
                    references=(), experiment=experiment, progress=False)
  assert [r["gate"]["accepted"] for r in report["rounds"]] == [True, True, True]
  assert [r["selected"] for r in report["rounds"]] == [6, 6, 0]
  assert report["final_round"] == 2
  ledger = read_ledger(os.path.join(str(tmp_path / "run"), "ledger.jsonl"))
  assert not any(e.strategy == gate_lib.GATE_ROLLBACK for e in ledger)


def test_difference_noise_is_a_paired_seeded_standard_error():
  rng = np.random.default_rng(0)
  labels = np.array([0] * 80 + [1] * 40)
  gate = {"label": labels}
  config = gate_lib.GateConfig(resamples=200)
  logits = np.stack([np.zeros(120), labels + rng.normal(0, 1.0, 120)], axis=1)
  # A model against itself: no noise at all (the resamples are paired).
  assert gate_lib.difference_noise(logits, logits, gate, config) == 0.0
  other = np.stack([np.zeros(120), labels + rng.normal(0, 1.0, 120)], axis=1)
  noise = gate_lib.difference_noise(other, logits, gate, config)
  assert noise == gate_lib.difference_noise(other, logits, gate, config)  # seeded
  # Against a brute-force bootstrap of independent draws: the same size.
  draws = []
  for _ in range(400):
    rows = np.concatenate([rng.choice(np.flatnonzero(labels == c), size=np.sum(labels == c))
                           for c in (0, 1)])
    draws.append(gate_lib.gate_value(other[rows], {"label": labels[rows]}, config)
                 - gate_lib.gate_value(logits[rows], {"label": labels[rows]}, config))
  assert noise == pytest.approx(np.std(draws, ddof=1), rel=0.25)
  assert 0.005 < noise < 0.1
  # A fall inside noise_z standard errors is tolerated; beyond them it is not.
  lenient = gate_lib.GateConfig(noise_z=1.0)
  assert not gate_lib.rejects(0.79, 0.80, lenient, noise=0.02)
  assert gate_lib.rejects(0.77, 0.80, lenient, noise=0.02)
  assert gate_lib.rejects(0.79, 0.80, gate_lib.GateConfig(), noise=0.02)
  for bad, message in ((dict(noise_z=-1.0), "noise_z=-1.0 must be >= 0"),
                       (dict(resamples=5), "resamples=5 must be an integer >= 10")):
    with pytest.raises(UserError, match=message):
      gate_lib.GateConfig(**bad).check()


@pytest.mark.parametrize("noise_z,accepted,final_round",
                         [(1.0, [True, True, False], 1), (0.0, [True, False, False], 0)])
def test_a_fall_within_the_gate_noise_keeps_the_round(experiment, tmp_path, monkeypatch,
                                                      noise_z, accepted, final_round):
  """With GateConfig.noise_z, the gate compares the fall with its standard error, computed
  against the accepted model's logits on the gate slice. The standard error is recorded
  with noise_z = 0 too (it then decides nothing), so finished runs can replay a noise_z."""
  _scripted_gate(monkeypatch, [0.80, 0.79, 0.70])
  seen = []

  def noise(logits, accepted_logits, gate, config):
    seen.append((logits.shape, accepted_logits.shape, len(gate["label"])))
    return 0.02

  monkeypatch.setattr(gate_lib, "difference_noise", noise)
  gin.bind_parameter("GateConfig.noise_z", noise_z)
  report = loop.run(str(tmp_path / "run"), num_rounds=2, strategy="loss", gate=True,
                    references=(), experiment=experiment, progress=False)
  gates = [r["gate"] for r in report["rounds"]]
  assert [g["accepted"] for g in gates] == accepted  # noise_z 1: -0.01 kept, -0.09 not
  assert [g["noise"] for g in gates] == [None, 0.02, 0.02]
  assert len(seen) == 2 and all(a == b and a[0] == n for a, b, n in seen)
  assert report["final_round"] == final_round


def test_gate_holds_out_validation_and_scores_the_real_model(experiment, tmp_path):
  report = loop.run(str(tmp_path / "run"), num_rounds=1, strategy="loss", gate=True,
                    references=(), experiment=experiment, progress=False)
  first = report["rounds"][0]["gate"]
  assert first["accepted"] and 0.0 <= first["value"] <= 1.0
  # Every round's gate logits are kept, and they give the recorded gate value.
  for summary in report["rounds"]:
    saved = np.load(os.path.join(tmp_path, "run", f"round_{summary['round']}",
                                 loop.GATE_LOGITS_FILE))
    assert len(saved["example_id"]) == 16 and saved["logits"].shape == (16, 2)
    assert gate_lib.gate_value(saved["logits"], {"label": saved["label"]},
                               gate_lib.GateConfig()) == summary["gate"]["value"]
  assert report["rounds"][0]["num_misclassified_validation"] <= 16  # half of 32 held out


def test_a_rejected_round_brings_its_removed_examples_back(experiment, tmp_path, monkeypatch):
  _scripted_gate(monkeypatch, [0.8, 0.7, 0.9])  # round 1 worse, round 2 better
  out = str(tmp_path / "run")
  report = loop.run(out, num_rounds=2, strategy="loss", action="relabel_or_remove", gate=True,
                    references=(), experiment=experiment, progress=False)
  rounds = report["rounds"]
  assert [r["gate"]["accepted"] for r in rounds] == [True, False, True]
  assert [(r["selected"], r["removed"]) for r in rounds] == [(6, 3), (3, 1), (0, 0)]
  ledger = read_ledger(os.path.join(out, "ledger.jsonl"))
  first = [e for e in ledger if e.round == 0]
  assert [e.new_label is None for e in first] == [False] * 3 + [True] * 3  # best 3 relabeled
  # Round 1 puts round 0's removed examples back with their labels, and its relabels back.
  undo = {e.example_id: (e.old_label, e.new_label) for e in ledger
          if e.round == 1 and e.strategy == gate_lib.GATE_ROLLBACK}
  assert undo == {e.example_id: ((e.old_label if e.new_label is None else e.new_label), e.old_label)
                  for e in first}
  train = experiment.data.splits["train"]
  num_train = len(train["label"])
  # Round 1 trained without round 0's three removed; round 2 on all but round 1's one removal.
  assert [r["num_train"] for r in rounds] == [num_train, num_train - 3, num_train - 1]
  after = apply_ledger(train, ledger, before_round=3)
  assert len(after["label"]) == num_train - 1
  assert report["final_round"] == 2
  assert "Labels changed over all rounds: 9 (4 of them by removing the example)" in open(
      os.path.join(out, "report.md")).read()


def test_gate_refuses_review_and_a_bad_gate_or_tier(experiment, tmp_path):
  with pytest.raises(UserError, match="--review"):
    loop.run(str(tmp_path / "b"), strategy="loss", gate=True, review=True,
             experiment=experiment, progress=False)
  gin.bind_parameter("GateConfig.fraction", 1.5)
  with pytest.raises(UserError, match="GateConfig.fraction=1.5"):
    loop.run(str(tmp_path / "c"), strategy="loss", gate=True, experiment=experiment,
             progress=False)
  assert not os.path.exists(tmp_path / "c")
  gin.bind_parameter("GateConfig.fraction", 0.5)
  gin.bind_parameter("relabel_tier.relabel_share", 2.0)
  with pytest.raises(UserError, match="relabel_tier.relabel_share = 2.0"):
    loop.run(str(tmp_path / "d"), strategy="loss", action="relabel_or_remove", gate=True,
             experiment=experiment, progress=False)
  assert not os.path.exists(tmp_path / "d")


def test_a_rerun_warm_starts_from_the_accepted_round_not_a_rejected_one(monkeypatch):
  monkeypatch.setattr(loop, "_last_prompt", lambda round_dir: round_dir)
  state = loop._RoundState(budget=6)
  rejected = {"round": 2, "budget": 3, "gate": {"accepted": False, "accepted_round": 1,
                                                "accepted_value": 0.7}}
  state.restore(rejected, lambda r: f"round_{r}")
  assert (state.prompt, state.budget, state.accepted_round) == ("round_1", 3, 1)
  state.restore({"round": 3, "budget": 3, "gate": {"accepted": True, "accepted_round": 3,
                                                   "accepted_value": 0.8}}, lambda r: f"round_{r}")
  assert (state.prompt, state.accepted_round) == ("round_3", 3)
  plain = loop._RoundState(budget=6)
  plain.restore({"round": 1}, lambda r: f"round_{r}")  # no gate: the round's own prompt
  assert (plain.prompt, plain.budget) == ("round_1", 6)


def _gated_report(values, noises, accepted, test_aucs):
  """A report.json's rounds as the loop writes them (only what the replay reads)."""
  return {"rounds": [{"gate": {"value": v, "noise": n, "accepted": a}, "test": {"auc": t}}
                     for v, n, a, t in zip(values, noises, accepted, test_aucs)]}


def test_gate_replay_changes_only_the_last_decision_and_refuses_to_guess_earlier_ones():
  from benchmarks import gate_replay
  # Round 2 fell by 0.01 with a standard error of 0.02: rejected at noise_z 0.
  last = _gated_report([0.80, 0.85, 0.84], [None, 0.03, 0.02], [True, True, False],
                       [0.70, 0.75, 0.78])
  assert gate_replay.replay(last, 0.0) == 1
  assert gate_replay.replay(last, 0.4) == 1  # 0.84 < 0.85 - 0.008
  assert gate_replay.replay(last, 0.6) == 2 and gate_replay.replay(last, None) == 2
  # Round 1 was rejected; keeping it would have trained round 2 on other labels: no guess.
  early = _gated_report([0.80, 0.79, 0.81], [None, 0.02, 0.02], [True, False, True],
                        [0.70, 0.72, 0.73])
  assert gate_replay.replay(early, 0.0) == 2
  assert gate_replay.replay(early, 1.0) is None and gate_replay.replay(early, None) is None
  # A round with nothing to judge (no noise recorded) is kept by every rule.
  empty = _gated_report([0.80, 0.70, 0.69], [None, None, 0.01], [True, True, False],
                        [0.70, 0.70, 0.71])
  assert gate_replay.replay(empty, 0.0) == 1 and gate_replay.replay(empty, 2.0) == 2
