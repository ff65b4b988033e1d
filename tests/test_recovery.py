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
from gbair_jax.recovery import actions, class_budgets, loop, registry, strategies
from gbair_jax.train.experiment import Experiment
from tests.helpers import synthetic_split, synthetic_three_class_split

LABELS = ("negative", "positive")
THREE_LABELS = ("negative", "neutral", "positive")


@pytest.fixture(scope="module")
def experiment():
  backbone = tiny_bert()
  data = LabeledData(task="synthetic", label_names=LABELS, splits={
      "train": synthetic_split(64, 0, corrupt=16), "validation": synthetic_split(32, 1, 1000),
      "test": synthetic_split(32, 2, 2000)})
  return Experiment(data=data, spec=build_classifier(backbone, LABELS, prompt_length=4),
                    frozen=backbone.load_params(), sequence_length=12)


@pytest.fixture(scope="module")
def three_class_experiment():
  backbone = tiny_bert()
  data = LabeledData(task="synthetic3", label_names=THREE_LABELS, splits={
      "train": synthetic_three_class_split(48, 0, corrupt=12),
      "validation": synthetic_three_class_split(24, 1, 1000),
      "test": synthetic_three_class_split(24, 2, 2000)})
  return Experiment(data=data, spec=build_classifier(backbone, THREE_LABELS, prompt_length=4),
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


def test_relabel_or_remove_relabels_the_best_ranked_share_and_removes_the_rest():
  train = {"label": np.array([0, 1, 0, 1, 1]), "example_id": np.arange(5) + 10}
  logits = np.zeros((5, 2))
  selected = np.array([3, 0, 4, 1, 2])  # best first
  entries = actions.act("relabel_or_remove", selected, train, logits, np.zeros(5), 1, "loss")
  # Default share 0.5 of 5, rounded up: the first three are relabeled.
  assert [(e.example_id, e.new_label) for e in entries] == [
      (13, 0), (10, 1), (14, 0), (11, None), (12, None)]
  gin.bind_parameter("relabel_tier.relabel_share", 0.2)
  entries = actions.act("relabel_or_remove", selected, train, logits, np.zeros(5), 1, "loss")
  assert [e.new_label for e in entries] == [0, None, None, None, None]
  assert actions.relabel_tier(4, relabel_share=0.0) == 0
  assert actions.relabel_tier(4, relabel_share=1.0) == 4
  for bad in (1.5, -0.1, True, "half"):
    with pytest.raises(UserError, match="relabel_tier.relabel_share"):
      actions.relabel_tier(4, relabel_share=bad)


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


@pytest.mark.parametrize("noisy_class", [0, 1])
def test_per_class_budgets_reach_the_rounds_through_gin(experiment, tmp_path, monkeypatch,
                                                        noisy_class):
  # The estimate says all the noise is in one class: every change must come from it, in
  # both directions (one global ranking would mix the classes).
  monkeypatch.setattr(class_budgets, "estimated_wrong_per_class",
                      lambda labels, probs: np.eye(2)[noisy_class])
  gin.parse_config("per_class_budgets.enabled = True")
  out = str(tmp_path / "run")
  loop.run(out, num_rounds=1, strategy="loss", references=(), experiment=experiment,
           progress=False)
  ledger = read_ledger(os.path.join(out, "ledger.jsonl"))
  assert len(ledger) == 6 and {e.old_label for e in ledger} == {noisy_class}


def test_strategies_see_the_round_they_score(experiment, tmp_path, monkeypatch):
  # vote_then_loss switches on the round index: each round's context must carry its own.
  seen = []
  def recording(ctx):
    seen.append(ctx.round_index)
    return strategies.random_strategy(ctx)
  monkeypatch.setitem(registry.STRATEGIES, "recording", recording)
  loop.run(str(tmp_path / "run"), num_rounds=2, strategy="recording", references=(),
           experiment=experiment, progress=False)
  assert seen == [0, 1]


def test_a_bad_per_class_budgets_binding_is_refused_before_work(experiment, tmp_path):
  gin.parse_config("per_class_budgets.enabled = 'yes'")
  with pytest.raises(UserError, match="per_class_budgets.enabled = 'yes'"):
    loop.run(str(tmp_path / "run"), experiment=experiment, progress=False)
  assert not os.path.exists(tmp_path / "run")


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
                                      "aum", "oracle", "class_vote", "class_vote_knn",
                                      "class_vote_embedding"])
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


@pytest.mark.parametrize("strategy", ["tracin_opponents", "class_vote", "class_vote_knn", "loss",
                                      "confident_learning", "aum", "random", "oracle",
                                      "self_influence", "class_vote_embedding"])
def test_every_strategy_relabels_with_three_classes(three_class_experiment, tmp_path, strategy):
  gin.bind_parameter("confident_learning_strategy.num_folds", 2)
  out = str(tmp_path / strategy)
  report = loop.run(out, num_rounds=1, strategy=strategy, references=(),
                    experiment=three_class_experiment, progress=False)
  assert 0 < report["rounds"][0]["selected"] <= 6 or strategy == "confident_learning"
  scores = np.load(os.path.join(out, "round_0", "scores.npz"))["score"]
  assert scores.shape == (48,) and not np.isnan(scores).any()
  for entry in read_ledger(os.path.join(out, "ledger.jsonl")):
    assert entry.new_label in (0, 1, 2) and entry.new_label != entry.old_label
  test = report["rounds"][-1]["test"]
  assert 0.0 <= test["auc"] <= 1.0 and 0.0 <= test["f1"] <= 1.0  # macro one-vs-rest, macro F1
  assert "threshold" not in test


def test_most_likely_other_and_three_class_vote_scores_by_hand():
  from gbair_jax.recovery.gradient_vote import most_likely_other, vote_scores
  logits = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [0.0, 0.0, 5.0]])
  np.testing.assert_array_equal(most_likely_other(logits, np.array([0, 1, 2])), [1, 0, 0])
  votes = np.array([[0.1, 0.5, 0.9], [0.1, 0.5, 0.9], [0.2, np.nan, 0.4]])
  # Row 0: label 0, other 2; row 1: label 2, other 1; row 2: its other class has no voter.
  np.testing.assert_allclose(vote_scores(votes, np.array([0, 2, 2]), np.array([2, 1, 1])),
                             [0.8, -0.4, -np.inf])


def test_pair_margin_loss_is_the_loss_difference_of_each_rows_pair(three_class_experiment):
  import jax
  from gbair_jax.influence.per_example_grads import per_example_grads
  from gbair_jax.recovery.gradient_vote import MarginLoss
  exp = three_class_experiment
  tokens = exp.tokenized_splits()["train"]
  batch = {k: tokens[k][:4] for k in ("tokens", "mask")}
  batch["valid"] = np.ones(4, bool)
  prompt = exp.spec.initial_prompt(jax.random.PRNGKey(0), exp.frozen)
  as_label = lambda y: np.asarray(per_example_grads(
      exp.spec.example_losses, prompt, exp.frozen, {**batch, "label": np.asarray(y, np.int32)}))
  low, high = np.array([0, 0, 1, 0], np.int32), np.array([1, 2, 2, 2], np.int32)
  margin = per_example_grads(MarginLoss(exp.spec), prompt, exp.frozen,
                             {**batch, "margin_low": low, "margin_high": high})
  # d(logit_high - logit_low) = g(z, low) - g(z, high) for softmax cross-entropy.
  np.testing.assert_allclose(np.asarray(margin), as_label(low) - as_label(high),
                             rtol=1e-4, atol=1e-6)


def test_three_class_vote_matches_a_brute_force_computation(three_class_experiment):
  """class_vote on three classes against the definition, one example at a time: each
  training example's margin towards its most likely other class, centred and voted on by
  the validation examples of those two classes only."""
  import jax
  from gbair_jax.influence.per_example_grads import per_example_grads
  from gbair_jax.recovery.context import RoundContext
  from gbair_jax.recovery.gradient_vote import MarginLoss, class_vote_scores
  from gbair_jax.train.trainer import predict_logits
  exp = three_class_experiment
  tokenized = exp.tokenized_splits()
  train, validation = tokenized["train"], tokenized["validation"]
  base = np.asarray(exp.spec.initial_prompt(jax.random.PRNGKey(0), exp.frozen))
  noise = np.random.default_rng(0).normal(size=base.shape).astype(base.dtype)
  checkpoints = [(base, 0.5), (base + 0.3 * noise, 0.25)]
  train_logits = predict_logits(exp.spec, checkpoints[-1][0], exp.frozen, train)
  ctx = RoundContext(spec=exp.spec, frozen=exp.frozen, train=train, validation=validation,
                     checkpoints=checkpoints, final_prompt=checkpoints[-1][0],
                     train_logits=train_logits, validation_logits=predict_logits(
                         exp.spec, checkpoints[-1][0], exp.frozen, validation),
                     seed=0, batch_size=8, progress=False)
  for neighbours in (None, 3):
    scores = class_vote_scores(ctx, neighbours, center=True)

    def margins(arrays, rows, low, high, prompt):
      batch = {"tokens": arrays["tokens"][rows], "mask": arrays["mask"][rows],
               "valid": np.ones(len(rows), bool),
               "margin_low": np.full(len(rows), low, np.int32),
               "margin_high": np.full(len(rows), high, np.int32)}
      return np.asarray(per_example_grads(MarginLoss(exp.spec), prompt, exp.frozen, batch),
                        np.float64)

    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    for i, label in enumerate(train["label"]):
      logits = train_logits[i].copy()
      logits[label] = -np.inf
      other = int(np.argmax(logits))
      low, high = min(label, other), max(label, other)
      voters = np.flatnonzero(np.isin(validation["label"], [low, high]))
      kernel = 0.0
      for prompt, lr in checkpoints:
        v = margins(validation, voters, low, high, prompt)
        z = margins(train, np.array([i]), low, high, prompt)
        mean = v.mean(axis=0)
        kernel = kernel + lr * unit(z - mean) @ unit(v - mean).T
      kernel = kernel[0]
      def vote(k):
        values = kernel[validation["label"][voters] == k]
        return np.sort(values)[-neighbours:].mean() if neighbours else values.mean()
      np.testing.assert_allclose(scores[i], vote(other) - vote(label), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strategy", ["tracin_opponents", "aum"])
def test_in_run_scoring_with_three_classes(three_class_experiment, tmp_path, strategy):
  gin.parse_config("tracin.source = 'in_run'")
  report = loop.run(str(tmp_path / strategy), num_rounds=1, strategy=strategy, references=(),
                    experiment=three_class_experiment, progress=False)
  assert report["rounds"][0]["selected"] == 6


def test_train_on_validation_adds_clean_validation_to_every_training(experiment, tmp_path,
                                                                    monkeypatch):
  """The same-clean-data control: each training run (the rounds, confident learning's fold
  prompts and the clean reference) sees the validation rows the strategies see with their
  labels; none becomes a candidate; the gate slice, never trained on, is what the rounds and
  the reference are evaluated on (validation metrics, decision threshold)."""
  from gbair_jax.recovery import out_of_fold
  seen, evaluated = [], []

  def recording(original):
    def train_prompt(spec, frozen, splits, *args, **kwargs):
      seen.append(splits["train"]["example_id"].copy())
      evaluated.append(splits.get("validation", {}).get("example_id"))
      return original(spec, frozen, splits, *args, **kwargs)
    return train_prompt

  monkeypatch.setattr(loop, "train_prompt", recording(loop.train_prompt))
  monkeypatch.setattr(out_of_fold, "train_prompt", recording(out_of_fold.train_prompt))
  gin.bind_parameter("confident_learning_strategy.num_folds", 2)
  train_ids = experiment.data.splits["train"]["example_id"]
  all_validation_ids = set(experiment.data.splits["validation"]["example_id"].tolist())
  out = str(tmp_path / "control")
  report = loop.run(out, num_rounds=1, strategy="confident_learning", references=("clean",),
                    experiment=experiment, progress=False, train_on_validation=True, gate=True)
  # Rounds 0 and 1, two folds in round 0, the clean reference.
  assert report["train_on_validation"] and len(seen) == 2 + 2 + 1
  gate_ids = set(evaluated[0].tolist())
  voter_ids = all_validation_ids - gate_ids
  assert gate_ids and voter_ids and gate_ids < all_validation_ids
  for ids in seen:
    assert voter_ids <= set(ids.tolist()) and not gate_ids & set(ids.tolist())
  assert sorted(seen[0].tolist()) == sorted(train_ids.tolist() + list(voter_ids))
  rounds_and_clean = [evaluated[i] for i in (0, 3, 4)]  # folds evaluate nothing
  assert all(set(ids.tolist()) == gate_ids for ids in rounds_and_clean)
  assert os.path.exists(os.path.join(out, "references", "clean_with_validation", "metrics.json"))
  changed = {e.example_id for e in read_ledger(os.path.join(out, "ledger.jsonl"))}
  assert changed and changed <= set(train_ids.tolist())
  assert report["rounds"][0]["num_train"] == len(train_ids)
  seen.clear()
  evaluated.clear()
  plain = loop.run(str(tmp_path / "plain"), num_rounds=0, strategy="loss", references=(),
                   experiment=experiment, progress=False)
  assert not plain["train_on_validation"] and sorted(seen[0].tolist()) == sorted(train_ids.tolist())
  assert set(evaluated[0].tolist()) == all_validation_ids
  # Refused before any work: without the gate no validation would be left out of training;
  # the in-run accumulators cover the training rows only.
  with pytest.raises(UserError, match="train_on_validation=True needs run.gate=True"):
    loop.run(str(tmp_path / "refused"), strategy="loss", experiment=experiment,
             progress=False, train_on_validation=True)
  gin.bind_parameter("tracin.source", "in_run")
  with pytest.raises(UserError, match="train_on_validation=True needs tracin.source"):
    loop.run(str(tmp_path / "refused"), strategy="tracin_opponents", experiment=experiment,
             progress=False, train_on_validation=True, gate=True)
  assert not os.path.exists(tmp_path / "refused")


def test_compare_runs_validation_controls_from_their_own_round_zero(experiment, tmp_path):
  from gbair_jax.recovery import compare
  out = str(tmp_path / "cmp")
  gin.bind_parameter("run.num_rounds", 1)
  gin.bind_parameter("run.progress", False)
  gin.bind_parameter("run.gate", True)
  results = compare.compare(out, ["loss", "loss+validation", "random+validation"],
                            experiment=experiment, progress=False)
  assert list(results) == ["loss", "loss+validation", "random+validation"]
  assert [r["train_on_validation"] for r in results.values()] == [False, True, True]
  assert [r["strategy"] for r in results.values()] == ["loss", "loss", "random"]
  round0 = {name: r["rounds"][0]["test"]["auc"] for name, r in results.items()}
  assert round0["loss+validation"] == round0["random+validation"]  # shared round 0
  metrics = lambda name: open(os.path.join(out, name, "round_0", "metrics.json")).read()
  assert metrics("loss+validation") == metrics("random+validation") != metrics("loss")
  # Two clean references: on the training set only (loss), and with the validation
  # examples too (trained by loss+validation, shown by random+validation as well).
  cleans = [json.dumps(r["references"]["clean"]) for r in results.values()]
  assert cleans[1] == cleans[2] != cleans[0]
  assert os.path.isdir(os.path.join(out, "loss+validation", "references", "clean_with_validation"))
  assert not os.path.exists(os.path.join(out, "random+validation", "references"))
  # A name without the suffix follows gin's run.train_on_validation.
  gin.bind_parameter("run.train_on_validation", True)
  assert compare.parse_strategy("loss") == ("loss", True)
  with pytest.raises(UserError, match="'nope' is unknown"):
    compare.compare(str(tmp_path / "bad"), ["nope+validation"], experiment=experiment)


def test_warm_start_references_train_as_long_as_the_run_and_are_shared(experiment, tmp_path):
  """With warm_start the final model trained num_rounds + 1 times in a row: the clean
  reference trains as long the same way, and unchanged_labels continues round 0 on the
  labels as given. Both are trained once by compare's first run and shown by every report."""
  from gbair_jax.recovery import benchmark, compare
  from gbair_jax.train.trainer import train_prompt
  out = str(tmp_path / "cmp")
  for name, value in (("num_rounds", 1), ("progress", False), ("retrain", "warm_start"),
                      ("references", ("clean", "no_recovery", "unchanged_labels"))):
    gin.bind_parameter(f"run.{name}", value)
  results = compare.compare(out, ["loss", "random"], experiment=experiment, progress=False)
  first, second = results["loss"]["references"], results["random"]["references"]
  assert first["unchanged_labels"] == second["unchanged_labels"]
  assert first["clean"] == second["clean"]
  assert os.path.isdir(os.path.join(out, "loss", "references", "unchanged_labels", "stage_1"))
  assert not os.path.exists(os.path.join(out, "random", "references"))

  # By hand: the same trainings, warm-started the way the rounds are.
  splits = experiment.tokenized_splits()
  train = lambda labels_from, directory, prompt: train_prompt(
      experiment.spec, experiment.frozen, {**splits, "train": labels_from}, str(tmp_path / directory),
      initial_prompt=prompt, progress=False, mesh=experiment.mesh)
  continued = train(splits["train"], "u1", loop._last_prompt(os.path.join(out, "loss", "round_0")))
  clean_train = {**splits["train"], "label": splits["train"]["original_label"].copy()}
  clean0 = train(clean_train, "c0", None)
  clean1 = train(clean_train, "c1", clean0.prompt)
  stage = lambda *parts: loop._last_prompt(os.path.join(out, "loss", "references", *parts))
  np.testing.assert_allclose(stage("unchanged_labels", "stage_1"), continued.prompt, atol=1e-6)
  np.testing.assert_allclose(stage("clean_warm_start", "stage_1"), clean1.prompt, atol=1e-6)
  assert not np.allclose(clean0.prompt, clean1.prompt)  # a second stage that changed nothing
  assert first["unchanged_labels"]["test"] == pytest.approx(continued.metrics["test"])
  assert first["clean"]["test"] == pytest.approx(clean1.metrics["test"])

  # The benchmark compares each final model with it.
  for name, report in results.items():
    metrics = benchmark.run_metrics(report, os.path.join(out, name), experiment.data.splits["train"])
    final_auc = metrics["final_test_auc"]
    assert metrics["unchanged_labels_test_auc"] == first["unchanged_labels"]["test"]["auc"]
    assert metrics["final_not_below_unchanged"] == (final_auc >= metrics["unchanged_labels_test_auc"])

  # A rerun trains nothing again.
  monkey = pytest.MonkeyPatch()
  monkey.setattr(loop, "train_prompt", lambda *a, **k: pytest.fail("retrained a finished stage"))
  try:
    again = compare.compare(out, ["loss", "random"], experiment=experiment, progress=False)
  finally:
    monkey.undo()
  assert again["loss"]["references"] == first


def test_unchanged_labels_reference_needs_warm_start(experiment, tmp_path):
  out = str(tmp_path / "fresh")
  with pytest.raises(UserError, match="'unchanged_labels' needs run.retrain='warm_start'"):
    loop.run(out, num_rounds=1, strategy="loss", references=("unchanged_labels",),
             experiment=experiment, progress=False)
  assert not os.path.exists(out)
  # Without rounds there is no more training: the reference is round 0 itself.
  report = loop.run(str(tmp_path / "none"), num_rounds=0, strategy="loss", retrain="warm_start",
                    references=("unchanged_labels",), experiment=experiment, progress=False)
  assert report["references"]["unchanged_labels"]["test"] == report["rounds"][0]["test"]
