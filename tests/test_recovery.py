"""Recovery rounds on the tiny random BERT: selection, actions, ledger, report, refusals."""
import json
import os

import gin
import numpy as np
import pytest

from gbair_jax.data.dataset import LabeledData
from gbair_jax.data.ledger import read_ledger
from gbair_jax.errors import UserError
from gbair_jax.models.bert import tiny_bert
from gbair_jax.models.classifier import build_classifier
from gbair_jax.recovery import actions, loop
from gbair_jax.train.experiment import Experiment
from tests.helpers import synthetic_split

LABELS = ("negative", "positive")


@pytest.fixture(scope="module")
def experiment():
  backbone = tiny_bert()
  data = LabeledData(task="synthetic", label_names=LABELS, splits={
      "train": synthetic_split(64, 0, corrupt=16), "validation": synthetic_split(32, 1, 1000),
      "test": synthetic_split(32, 2, 2000)})
  return Experiment(data=data, spec=build_classifier(backbone, LABELS, prompt_length=4),
                    frozen=backbone.load_params(), sequence_length=12)


@pytest.fixture(autouse=True)
def small_gin():
  gin.clear_config()
  gin.parse_config("train_prompt.num_epochs = 2\ntrain_prompt.batch_size = 16\n"
                   "train_prompt.tensorboard = False\nselection_size.select_count = 6\n"
                   "tracin_opponents.top_k = 8")
  yield
  gin.clear_config()


def test_select_suspects_orders_and_excludes():
  scores = np.array([0.5, 3.0, -np.inf, 2.0, 3.0])
  np.testing.assert_array_equal(actions.select_suspects(scores, 3), [1, 4, 3])
  exclude = np.array([False, True, False, False, False])
  np.testing.assert_array_equal(actions.select_suspects(scores, 10, exclude), [4, 3, 0])


def test_near_ties_keep_training_order_on_any_mesh():
  """Scores that differ only in the last bits (another device count adds in another
  order) select the same examples, in training-set order."""
  one_device = np.array([1.0, 0.5, 0.5, 0.2])
  eight_devices = one_device * (1 + np.array([3e-7, -2e-7, 4e-7, 1e-7]))
  for scores in (one_device, eight_devices):
    np.testing.assert_array_equal(actions.select_suspects(scores, 3), [0, 1, 2])


def test_selection_size_bounds():
  assert actions.selection_size(100, select_count=7) == 7
  assert actions.selection_size(100, select_count=None, select_fraction=0.25) == 25
  with pytest.raises(UserError, match="select_count=101"):
    actions.selection_size(100, select_count=101)


def test_actions_flip_pick_other_class_or_remove():
  train = {"label": np.array([0, 2, 1]), "example_id": np.array([10, 11, 12])}
  logits = np.array([[0.0, 5.0, 1.0], [9.0, 1.0, 8.0], [0.0, 0.0, 0.0]])
  entries = actions.act("relabel", np.array([0, 1]), train, logits, np.array([1.0, 2.0, 3.0]), 4, "loss")
  assert [(e.example_id, e.old_label, e.new_label) for e in entries] == [(10, 0, 1), (11, 2, 0)]
  removed = actions.act("remove", np.array([2]), train, logits, np.zeros(3), 0, "loss")
  assert removed[0].new_label is None
  binary = actions.act("relabel", np.array([0]), {"label": np.array([1]), "example_id": np.array([5])},
                       np.array([[2.0, 1.0]]), np.zeros(1), 0, "loss")
  assert binary[0].new_label == 0


def test_loss_rounds_write_ledger_and_report(experiment, tmp_path):
  out = str(tmp_path / "run")
  report = loop.run(out, num_rounds=2, strategy="loss", experiment=experiment, progress=False)
  ledger = read_ledger(os.path.join(out, "ledger.jsonl"))
  assert [r["selected"] for r in report["rounds"]] == [6, 6, 0]
  assert len(ledger) == 12 and {e.round for e in ledger} == {0, 1}
  assert len({e.example_id for e in ledger}) == 12, "an example is changed at most once"
  on_disk = json.load(open(os.path.join(out, "report.json")))
  for key in ("config", "task", "num_train", "num_corrupted", "rounds", "references"):
    assert key in on_disk
  assert on_disk["num_corrupted"] == 16
  row = on_disk["rounds"][0]
  for key in ("round", "selected", "precision", "recall_cumulative", "corrupted_remaining",
              "validation", "test", "seconds"):
    assert key in row
  assert set(row["test"]) == {"accuracy", "f1", "auc", "threshold", "accuracy_at_threshold",
                              "f1_at_threshold"}
  assert set(on_disk["references"]) == {"clean", "no_recovery"}
  assert on_disk["references"]["no_recovery"]["test"] == row["test"]
  # Precision and recall agree with the ledger and the corruption mask.
  corrupted = set(experiment.data.splits["train"]["example_id"][:16].tolist())
  hits0 = sum(e.example_id in corrupted for e in ledger if e.round == 0)
  assert row["precision"] == pytest.approx(hits0 / 6)
  hits = sum(e.example_id in corrupted for e in ledger)
  assert on_disk["rounds"][1]["recall_cumulative"] == pytest.approx(hits / 16)
  # Relabeling a corrupted example fixes it; relabeling a clean one breaks it.
  assert on_disk["rounds"][1]["corrupted_remaining"] == 16 - hits
  assert on_disk["rounds"][1]["wrong_labels"] == 16 - hits + (12 - hits)
  for name in ("report.md", "test_metrics.png", "detection.png", "round_0/suspects.jsonl"):
    assert os.path.getsize(os.path.join(out, name)) > 0
  suspects = [json.loads(l) for l in open(os.path.join(out, "round_0/suspects.jsonl"))]
  assert {s["example_id"] for s in suspects} == {e.example_id for e in ledger if e.round == 0}
  assert all(s["text"] for s in suspects)


def test_rerun_reuses_finished_rounds_and_refuses_other_config(experiment, tmp_path):
  out = str(tmp_path / "run")
  first = loop.run(out, num_rounds=1, strategy="random", experiment=experiment, progress=False)
  ledger_before = open(os.path.join(out, "ledger.jsonl")).read()
  # Pretend the process died before writing round 1's summary.
  os.remove(os.path.join(out, "round_1", "round.json"))
  again = loop.run(out, num_rounds=1, strategy="random", experiment=experiment, progress=False)
  assert open(os.path.join(out, "ledger.jsonl")).read() == ledger_before
  assert again["rounds"] == first["rounds"][:1] + again["rounds"][1:]
  assert again["rounds"][1]["test"] == pytest.approx(first["rounds"][1]["test"])
  with pytest.raises(UserError, match="different gin config"):
    loop.run(out, num_rounds=1, strategy="loss", experiment=experiment, progress=False)


def test_unknown_strategy_and_action_fail_before_work(experiment, tmp_path):
  with pytest.raises(UserError, match="strategy 'nope' is unknown"):
    loop.run(str(tmp_path / "a"), strategy="nope", experiment=experiment, progress=False)
  with pytest.raises(UserError, match="action='fix'"):
    loop.run(str(tmp_path / "b"), action="fix", experiment=experiment, progress=False)
  assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


@pytest.mark.parametrize("strategy", ["tracin_opponents", "self_influence", "confident_learning",
                                      "aum", "oracle", "class_vote", "class_vote_knn"])
def test_other_strategies_run_one_round(experiment, tmp_path, strategy):
  report = loop.run(str(tmp_path / strategy), num_rounds=1, strategy=strategy, action="remove",
                    references=(), experiment=experiment, progress=False)
  assert 0 <= report["rounds"][0]["selected"] <= 6
  assert report["rounds"][1]["num_train"] == 64 - report["rounds"][0]["selected"]


def test_opposition_loss_ranks_examples_strong_on_both_signals_first():
  from gbair_jax.recovery.tracin_strategies import _ranks, _tiebreak
  opposition = np.array([5.0, 0.0, 4.0, 1.0])  # -negative influence
  loss = np.array([0.1, 3.0, 2.0, 0.2])
  combined = _tiebreak(_ranks(opposition) + _ranks(loss), loss)
  # Example 2 is second on both signals: it beats 0 (opposes most, lowest loss) and 1.
  assert int(np.argmax(combined)) == 2
  np.testing.assert_array_equal(_ranks(np.array([3.0, 1.0, 2.0])), [2, 0, 1])
  # Ties on the primary key are broken by the secondary one, never reordering primaries.
  assert list(np.argsort(-_tiebreak(np.array([1.0, 1.0, 0.0]), np.array([0.0, 9.0, 99.0])))) == [1, 0, 2]


def test_net_opposition_is_direction_times_residual():
  from gbair_jax.recovery.tracin_strategies import net_opposition
  mean = np.array([-2.0, -2.0, 1.0, -1.0])
  self_influence = np.array([4.0, 16.0, 1.0, 1.0])  # example 1: same push, twice the norm
  losses = -np.log(np.array([0.1, 0.1, 0.1, 0.9]))    # p(label): implausible, ..., plausible
  scores = net_opposition(mean, self_influence, losses)
  np.testing.assert_allclose(scores, [0.9, 0.45, -0.9, 0.1])
  # Growing an example's gradient (mean influence x s, self-influence x s^2) changes nothing.
  np.testing.assert_allclose(net_opposition(mean * 3, self_influence * 9, losses), scores)
  # Cosine scores are not divided again.
  np.testing.assert_allclose(net_opposition(mean, None, losses), [1.8, 1.8, -0.9, 0.1])


@pytest.mark.parametrize("aggregation,queries", [
    ("count", "validation"), ("sum_negative", "misclassified"), ("count_loss", "validation"),
    ("opposition_loss", "misclassified"), ("net_opposition", "misclassified")])
def test_every_tracin_aggregation_selects(experiment, tmp_path, aggregation, queries):
  gin.parse_config(f"tracin_opponents.aggregation = '{aggregation}'\n"
                   f"tracin_opponents.queries = '{queries}'")
  report = loop.run(str(tmp_path / aggregation), num_rounds=1, references=(),
                    experiment=experiment, progress=False)
  assert report["strategy"] == "tracin_opponents" and report["rounds"][0]["selected"] > 0


def test_oracle_selects_only_wrong_labels(experiment, tmp_path):
  report = loop.run(str(tmp_path / "oracle"), num_rounds=1, strategy="oracle", references=(),
                    experiment=experiment, progress=False)
  assert report["rounds"][0]["selected"] == 6 and report["rounds"][0]["precision"] == 1.0
  assert report["rounds"][1]["corrupted_remaining"] == 16 - 6
  scores = np.load(os.path.join(tmp_path, "oracle", "round_0", "scores.npz"))
  train = experiment.data.splits["train"]
  np.testing.assert_array_equal(scores["example_id"], train["example_id"])
  np.testing.assert_array_equal(np.isfinite(scores["score"]), train["is_corrupted"])


def test_aum_margins_by_hand():
  from gbair_jax.recovery.training_dynamics import area_under_margin, margins
  logits = np.array([[2.0, 0.5, 1.0], [0.0, 3.0, -1.0]])
  np.testing.assert_allclose(margins(logits, np.array([0, 0])), [1.0, -3.0])
  per_epoch = np.array([[1.0, -3.0], [3.0, 1.0]])
  np.testing.assert_allclose(area_under_margin(per_epoch), [2.0, -1.0])


def test_confident_learning_out_of_fold_trains_k_prompts(experiment, tmp_path):
  gin.bind_parameter("confident_learning_strategy.num_folds", 3)
  out = str(tmp_path / "cl")
  report = loop.run(out, num_rounds=1, strategy="confident_learning", references=(),
                    experiment=experiment, progress=False)
  folds = sorted(os.listdir(os.path.join(out, "round_0", "out_of_fold")))
  assert folds == ["fold_0", "fold_1", "fold_2"]
  assert 0 <= report["rounds"][0]["selected"] <= 6
  from gbair_jax.recovery.out_of_fold import out_of_fold_probabilities
  with pytest.raises(UserError, match="num_folds = 1: must be an integer >= 2"):
    out_of_fold_probabilities(None, 1, "confident_learning_strategy.num_folds")


def test_class_vote_by_hand():
  from gbair_jax.recovery.gradient_vote import class_votes, vote_scores
  kernel = np.array([[0.9, 0.7, -0.2, 0.0, -0.4],    # like class 0's voters
                     [-0.5, -0.3, 0.6, 0.8, 0.4]])   # like class 1's voters
  query_labels = np.array([0, 0, 1, 1, 1])
  votes = class_votes(kernel, query_labels, 2)
  np.testing.assert_allclose(votes, [[0.8, -0.2], [-0.4, 0.6]])
  # Labelled 1, looks like 0: suspect (+1.0); labelled 1, looks like 1: not (-1.0).
  np.testing.assert_allclose(vote_scores(votes, np.array([1, 1])), [1.0, -1.0])
  np.testing.assert_allclose(vote_scores(votes, np.array([0, 0])), [-1.0, 1.0])
  # k nearest voters per class: class 0's best is 0.9, class 1's is 0.0 (row 0).
  np.testing.assert_allclose(class_votes(kernel, query_labels, 2, neighbours=1),
                             [[0.9, 0.0], [-0.3, 0.8]])
  # A class without voters: no suspects.
  lonely = class_votes(kernel, np.zeros(5, int), 2)
  assert np.isneginf(vote_scores(lonely, np.array([0, 1]))).all()


def test_margin_loss_gradient_is_the_label_free_loss_difference(experiment):
  import jax
  from gbair_jax.influence.per_example_grads import per_example_grads
  from gbair_jax.recovery.gradient_vote import MarginLoss
  tokens = experiment.tokenized_splits()["train"]
  batch = {k: tokens[k][:4] for k in ("tokens", "mask")}
  batch["valid"] = np.ones(4, bool)
  prompt = experiment.spec.initial_prompt(jax.random.PRNGKey(0), experiment.frozen)
  spec = experiment.spec
  as_label = lambda y: per_example_grads(spec.example_losses, prompt, experiment.frozen,
                                         {**batch, "label": np.full(4, y, np.int32)})
  margin = per_example_grads(MarginLoss(spec), prompt, experiment.frozen, batch)
  np.testing.assert_allclose(np.asarray(margin), np.asarray(as_label(0) - as_label(1)),
                             rtol=1e-4, atol=1e-6)
