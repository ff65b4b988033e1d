"""`gbair benchmark`: the paired bootstrap and detection metrics by hand, and a tiny suite
(tiny random BERT, 2 seeds, 2 strategies) end to end: schema, arithmetic, resume."""
import json
import os
import types

import numpy as np
import pytest

from gbair_jax.recovery import benchmark
from gbair_jax.train.metrics import average_precision
from tests.helpers import (gbair_in_process, synthetic_three_class_split, write_sentiment_csv,
                           write_tiny_run_gin)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_paired_bootstrap_by_hand():
  # Two seeds: the resampled means are d1 (1/4), (d1 + d2) / 2 (1/2), d2 (1/4), so the
  # 2.5th and 97.5th percentiles are the two differences themselves.
  out = benchmark.paired_bootstrap([0.80, 0.70], [0.78, 0.64])
  assert out["n"] == 2
  assert out["mean_diff"] == pytest.approx(0.04)
  assert out["ci95"] == pytest.approx([0.02, 0.06])
  # Three seeds, differences (0, 0, 0.3): 27 equally likely resamples whose means are
  # 0.1 x (times the third seed is drawn): 8 x 0, 12 x 0.1, 6 x 0.2, 1 x 0.3. Cumulative
  # shares 8/27 >= 2.5% at 0; 26/27 = 96.3% < 97.5% at 0.2, so the upper end is 0.3.
  out = benchmark.paired_bootstrap([1.0, 2.0, 3.3], [1.0, 2.0, 3.0])
  assert out["mean_diff"] == pytest.approx(0.1)
  assert out["ci95"] == pytest.approx([0.0, 0.3])
  # Four seeds, differences 0.1, 0.2, 0.3, 0.4: 256 resamples; in units of 0.1 the sum of
  # four draws is 4 (1 way), 5 (4 ways), 6 (4 + 6 ways): shares 1/256, 5/256 = 2.0% <
  # 2.5%, 15/256 = 5.9%, so the low end is a sum of 6 (mean 0.15); by symmetry the high
  # end is a sum of 14 (mean 0.35).
  out = benchmark.paired_bootstrap([0.6, 0.7, 0.8, 0.9], [0.5, 0.5, 0.5, 0.5])
  assert out["mean_diff"] == pytest.approx(0.25)
  assert out["ci95"] == pytest.approx([0.15, 0.35])
  # Missing values drop their pair; nothing left -> None.
  assert benchmark.paired_bootstrap([None, 0.5], [0.4, 0.3])["n"] == 1
  assert benchmark.paired_bootstrap([None], [0.1]) == {"mean_diff": None, "ci95": [None, None], "n": 0}
  # Many seeds: Monte Carlo, seeded, close to the normal interval.
  rng = np.random.default_rng(0)
  a, b = rng.normal(0.1, 1.0, 40), np.zeros(40)
  mc = benchmark.paired_bootstrap(list(a), list(b), num_resamples=20000)
  assert mc == benchmark.paired_bootstrap(list(a), list(b), num_resamples=20000)
  half = 1.96 * a.std(ddof=0) / np.sqrt(40)
  assert mc["ci95"][0] == pytest.approx(a.mean() - half, abs=0.05)
  assert mc["ci95"][1] == pytest.approx(a.mean() + half, abs=0.05)


def test_average_precision_by_hand():
  # Ranking (best first): +, -, +, -: precision at the positives 1 and 2/3 -> AP 5/6.
  assert average_precision(np.array([4.0, 3.0, 2.0, 1.0]),
                           np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
  # A tie between a positive and a negative at the top enters as one step: P = 1/2.
  assert average_precision(np.array([1.0, 1.0, 0.0]), np.array([1, 0, 0])) == pytest.approx(0.5)
  assert np.isnan(average_precision(np.array([1.0]), np.array([0])))


def test_mean_std_skips_missing_values():
  assert benchmark._mean_std([1.0, None, 3.0]) == {"mean": 2.0, "std": pytest.approx(np.sqrt(2)),
                                                   "values": [1.0, None, 3.0]}
  assert benchmark._mean_std([None])["mean"] is None


def _round(auc, accepted=None):
  return {"test": {"auc": auc}, "gate": None if accepted is None else {"accepted": accepted}}


def test_gate_agreement_by_hand():
  # Round 1 kept and test rose (agrees); round 2 kept but test fell below round 1, the kept
  # model, although still above round 0 (disagrees); round 3 rolled back and test fell
  # below round 2, now the kept model (agrees): 2 of 3.
  rounds = [_round(0.70), _round(0.75, True), _round(0.72, True), _round(0.71, False)]
  assert benchmark.gate_agreement(rounds) == pytest.approx(2 / 3)
  # A rolled-back round is not the reference for the next: round 2 (kept, 0.75) is compared
  # with round 0 (agrees), not with the rolled-back 0.80 (which would make it 0 of 2).
  rounds = [_round(0.70), _round(0.80, False), _round(0.75, True)]
  assert benchmark.gate_agreement(rounds) == pytest.approx(0.5)
  assert benchmark.gate_agreement([_round(0.70), _round(0.71)]) is None  # no gate


def _summary(with_clean: bool, seeds=(115, 116)) -> dict:
  """benchmark.json's content for a warm-started run (two seeds by default), from hand-made
  run metrics."""
  seeds, strategies = list(seeds), ["class_vote_embedding", "loss"]
  runs = {s: {name: {"final_test_auc": 0.84 + 0.01 * i + 0.001 * (s - 115), "round0_test_auc": 0.79,
                     "clean_test_auc": 0.86 if with_clean else None,
                     "unchanged_labels_test_auc": 0.83, "final_not_below_unchanged": i == 0,
                     "train_on_validation": True}
                  for i, name in enumerate(strategies)} for s in seeds}
  data = types.SimpleNamespace(task="t", label_names=("a", "b"))
  return benchmark.summarize(runs, strategies, seeds, "s", data, num_resamples=100)


@pytest.mark.parametrize("with_clean", [True, False])
def test_markdown_names_only_the_references_trained(with_clean):
  from gbair_jax.report import benchmark_writer  # pylint: disable=g-import-not-at-top
  markdown = benchmark_writer.format_markdown(_summary(with_clean))
  # run.references without "clean": the text must not claim a clean reference was trained.
  assert ("clean reference" in markdown) == with_clean
  assert "clean labels -" not in markdown  # nothing said of a reference not trained
  assert ("round 0 (no recovery) 0.790 ± 0.000, clean labels 0.860 ± 0.000 (both trained on the "
          "validation examples too)." if with_clean else
          "round 0 (no recovery) 0.790 ± 0.000 (trained on the validation examples too).") in markdown
  assert "round 0 trained on as long without a change (unchanged_labels) scores 0.830" in markdown
  shares = sum(1 for key, _, _ in benchmark.METRICS if key in benchmark_writer._SHARES)
  assert f"shares of runs for the last {shares} columns" in markdown
  header = next(line for line in markdown.splitlines() if line.startswith("| strategy | final"))
  assert header.rstrip(" |").split(" | ")[-shares:] == [
      title for key, title, _ in benchmark.METRICS if key in benchmark_writer._SHARES]


@pytest.mark.parametrize("seeds,phrase", [((115,), "(1 paired run per strategy;"),
                                          ((115, 116), "(2 paired runs per strategy;")])
def test_markdown_counts_the_paired_runs(seeds, phrase):
  from gbair_jax.report import benchmark_writer  # pylint: disable=g-import-not-at-top
  assert phrase in benchmark_writer.format_markdown(_summary(True, seeds))


@pytest.mark.parametrize("pending,phrase", [([119], "seed 119 not run yet"),
                                            ([118, 119], "seeds 118, 119 not run yet")])
def test_markdown_names_the_pending_seeds(pending, phrase):
  from gbair_jax.report import benchmark_writer  # pylint: disable=g-import-not-at-top
  summary = {**_summary(True, (115,)), "seeds_pending": pending}
  assert f"**In progress**: {phrase}" in benchmark_writer.format_markdown(summary)


def _config_str(bindings: str) -> str:
  import gin
  import gbair_jax.recovery.benchmark  # noqa: F401  pylint: disable=unused-import,redefined-outer-name
  gin.clear_config()
  gin.parse_config(bindings)
  text = gin.config_str()
  gin.clear_config()
  return text


def test_recorded_configs_match_whatever_runs_a_benchmark_lists():
  from gbair_jax import config as config_lib
  short = _config_str("benchmark.strategies = ['loss']\nbenchmark.seeds = (1,)\n"
                      "corrupt_labels.seed = 3")
  # Twelve names: gin wraps the binding over indented lines, which go with it.
  names = [f"strategy_number_{i}" for i in range(12)]
  long = _config_str(f"benchmark.strategies = {names}\nbenchmark.seeds = (1, 2, 3)\n"
                     "corrupt_labels.seed = 3")
  assert "'strategy_number_11']" in long
  old_style = long + "\n# seeds: 1,2,3\n# strategies: a,b\n"  # as directories recorded before
  assert config_lib.same_recorded_config(short, long)
  assert config_lib.same_recorded_config(old_style, short)
  assert "strategy_number" not in config_lib.without_run_lists(long)
  assert "corrupt_labels.seed = 3" in config_lib.without_run_lists(long)
  # Any other difference still counts, a run's own "# strategy:" line included.
  other = _config_str("benchmark.strategies = ['loss']\nbenchmark.seeds = (1,)\n"
                      "corrupt_labels.seed = 4")
  assert not config_lib.same_recorded_config(other, short)
  assert not config_lib.same_recorded_config(short + "# strategy: loss\n",
                                             short + "# strategy: random\n")


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
  root = tmp_path_factory.mktemp("bench")
  write_sentiment_csv(root / "data.csv")
  return write_tiny_run_gin(root / "tiny_suite.gin", root / "data.csv", batch_size=16, extra="""
import gbair_jax.recovery.benchmark
train_prompt.tensorboard = False
run.num_rounds = 1
run.progress = False
confident_learning_strategy.num_folds = 2
benchmark.strategies = ['loss', 'confident_learning']
benchmark.seeds = (7, 8, 9)
""")


def test_tiny_suite_end_to_end(tiny_suite, tmp_path, monkeypatch):
  from gbair_jax import config as config_lib
  config_lib.parse_gin([tiny_suite])
  out = str(tmp_path / "bench")
  summary = benchmark.benchmark(out, seeds_override=[1, 2], command="gbair benchmark ...")
  on_disk = json.load(open(os.path.join(out, "benchmark.json")))
  assert on_disk == json.loads(json.dumps(summary))
  assert on_disk["seeds"] == [1, 2] and on_disk["development_seeds"] == [1, 2]
  assert on_disk["seeds_pending"] == []
  assert on_disk["default_strategy"] == "tracin_opponents"  # run.strategy's default
  assert set(on_disk["strategies"]) == {"loss", "confident_learning"}
  for name in ("loss", "confident_learning"):
    for key in ("final_test_auc", "recovered_share", "precision", "recall", "detection_auroc",
                "detection_auprc", "wrong_labels_remaining", "final_test_f1_at_threshold",
                "validation_never_fell"):
      stat = on_disk["strategies"][name][key]
      assert set(stat) == {"mean", "std", "values"} and len(stat["values"]) == 2
    assert on_disk["strategies"][name]["gate_agreement"]["values"] == [None, None]  # no gate
    auc = on_disk["strategies"][name]["final_test_auc"]
    assert auc["mean"] == pytest.approx(np.mean(auc["values"]))
    assert auc["std"] == pytest.approx(np.std(auc["values"], ddof=1))
    for base in ("loss", "confident_learning"):
      assert set(on_disk["paired"][name][f"vs_{base}"]) == {"mean_diff", "ci95", "n"}
  # The bootstrap arithmetic, by hand from the file's own values (two seeds: the interval
  # is the two per-seed differences).
  gbair = on_disk["strategies"]["confident_learning"]["final_test_auc"]["values"]
  loss = on_disk["strategies"]["loss"]["final_test_auc"]["values"]
  diffs = [g - l for g, l in zip(gbair, loss)]
  paired = on_disk["paired"]["confident_learning"]["vs_loss"]
  assert paired["mean_diff"] == pytest.approx(np.mean(diffs))
  assert paired["ci95"] == pytest.approx([min(diffs), max(diffs)])
  assert on_disk["paired"]["loss"]["vs_loss"] == {"mean_diff": 0.0, "ci95": [0.0, 0.0], "n": 2}
  # Paired: round 0 and the clean reference are shared within a seed, differ across seeds.
  runs = on_disk["runs"]
  for seed in ("1", "2"):
    assert runs[seed]["loss"]["round0_test_auc"] == runs[seed]["confident_learning"]["round0_test_auc"]
    assert runs[seed]["loss"]["clean_test_auc"] == runs[seed]["confident_learning"]["clean_test_auc"]
  corrupted = [json.load(open(os.path.join(out, f"seed_{s}", "loss", "report.json")))
               for s in (1, 2)]
  ids = [set(json.loads(l)["example_id"] for l in open(os.path.join(
      out, f"seed_{s}", "loss", "round_0", "suspects.jsonl"))) for s in (1, 2)]
  assert ids[0] != ids[1] and corrupted[0]["num_corrupted"] == corrupted[1]["num_corrupted"]
  markdown = open(os.path.join(out, "benchmark.md")).read()
  assert "| loss |" in markdown and "vs confident_learning" in markdown
  assert "development seeds" in markdown and "@t" in markdown
  assert os.path.getsize(os.path.join(out, "benchmark.png")) > 0
  # Resume: a rerun reuses every finished run (no checkpoint is rewritten) and gives the
  # same numbers.
  marker = os.path.join(out, "seed_2", "loss", "round_1", "round.json")
  before = os.path.getmtime(marker)
  config_lib.parse_gin([tiny_suite])
  again = benchmark.benchmark(out, seeds_override=[1, 2], command="gbair benchmark ...")
  assert os.path.getmtime(marker) == before
  assert json.loads(json.dumps(again))["runs"] == runs
  # The files are written after every seed: a benchmark that stops at seed 5 leaves seeds
  # 1 and 2 summed up, seed 5 named as pending.
  compare = benchmark.compare_lib.compare
  def stop_at_seed_5(seed_dir, *args, **kwargs):
    if seed_dir.endswith("seed_5"):
      raise RuntimeError("stopped")
    return compare(seed_dir, *args, **kwargs)
  monkeypatch.setattr(benchmark.compare_lib, "compare", stop_at_seed_5)
  config_lib.parse_gin([tiny_suite])
  with pytest.raises(RuntimeError, match="stopped"):
    benchmark.benchmark(out, seeds_override=[1, 2, 5])
  monkeypatch.undo()
  partial = json.load(open(os.path.join(out, "benchmark.json")))
  assert partial["seeds"] == [1, 2] and partial["seeds_pending"] == [5]
  assert partial["runs"] == runs
  assert "**In progress**: seed 5 not run yet" in open(os.path.join(out, "benchmark.md")).read()
  # A rerun may list another seed list and more strategies, the new one first: the
  # finished runs resume as they were, and the new one starts from the same round 0.
  config_lib.parse_gin([tiny_suite], ["benchmark.strategies = ['random', 'loss', 'confident_learning']"])
  more = json.loads(json.dumps(benchmark.benchmark(out, seeds_override=[2])))
  assert os.path.getmtime(marker) == before
  assert more["strategies_run"] == ["random", "loss", "confident_learning"]
  assert more["runs"]["2"]["loss"] == runs["2"]["loss"]
  assert more["runs"]["2"]["random"]["round0_test_auc"] == runs["2"]["loss"]["round0_test_auc"]
  assert more["runs"]["2"]["random"]["clean_test_auc"] == runs["2"]["loss"]["clean_test_auc"]
  assert not os.path.exists(os.path.join(out, "seed_1", "random"))
  for config_gin in ("config.gin", "seed_2/config.gin", "seed_2/random/config.gin"):
    assert "benchmark.strategies" not in open(os.path.join(out, config_gin)).read()
  # Any other change of the config is refused, and nothing is written.
  from gbair_jax.errors import UserError
  config_lib.parse_gin([tiny_suite], ["run.num_rounds = 2"])
  with pytest.raises(UserError, match="different gin config"):
    benchmark.benchmark(out, seeds_override=[1, 2])
  assert not os.path.exists(os.path.join(out, "seed_1", "loss", "round_2"))


def test_three_class_suite_end_to_end(tmp_path):
  """A tiny three-class suite through `benchmark`: the vote, AUM and the baselines run,
  detection metrics come out, and benchmark.md says what AUC and F1 mean for C > 2."""
  import csv
  from gbair_jax import config as config_lib
  split = synthetic_three_class_split(150, 0)
  names = ("negative", "neutral", "positive")
  with open(tmp_path / "data.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["text", "label"])
    writer.writerows((t, names[y]) for t, y in zip(split["text"], split["label"]))
  gin_file = write_tiny_run_gin(tmp_path / "three.gin", tmp_path / "data.csv",
                                label_names=names, corruption_rate=0.3, batch_size=16, extra="""
import gbair_jax.recovery.benchmark
train_prompt.tensorboard = False
run.num_rounds = 1
run.progress = False
run.gate = True
benchmark.strategies = ['class_vote_knn', 'aum', 'loss', 'confident_learning', 'loss+validation']
confident_learning_strategy.num_folds = 2
benchmark.seeds = (3,)
""")
  config_lib.parse_gin([gin_file])
  out = str(tmp_path / "bench")
  summary = json.loads(json.dumps(benchmark.benchmark(out)))
  assert summary["label_names"] == list(names)
  for name in ("class_vote_knn", "aum", "loss"):
    stats = summary["strategies"][name]
    assert 0.0 <= stats["final_test_auc"]["mean"] <= 1.0
    assert stats["detection_auroc"]["mean"] is not None
    # Gated rounds: the gate's decisions are scored against test AUC (ungated: None).
    report = json.load(open(os.path.join(out, "seed_3", name, "report.json")))
    assert stats["gate_agreement"]["values"] == [benchmark.gate_agreement(report["rounds"])]
    assert stats["gate_agreement"]["values"][0] in (0.0, 1.0)  # one round: one decision
    # No threshold for three classes: F1@t falls back to the argmax F1.
    assert stats["final_test_f1_at_threshold"]["values"] == stats["final_test_f1"]["values"]
  markdown = open(os.path.join(out, "benchmark.md")).read()
  assert "3 classes (negative, neutral, positive): test AUC is the macro one-vs-rest" in markdown
  # The same-clean-data control is a baseline of its own: paired against, in its own column.
  assert summary["baselines"] == ["loss", "confident_learning", "loss+validation"]
  vote = summary["strategies"]["class_vote_knn"]["final_test_auc"]["values"]
  control = summary["strategies"]["loss+validation"]["final_test_auc"]["values"]
  assert summary["paired"]["class_vote_knn"]["vs_loss+validation"]["mean_diff"] == pytest.approx(
      vote[0] - control[0])
  assert "vs loss+validation" in markdown and "| loss+validation |" in markdown
  assert summary["train_on_validation"] == {"class_vote_knn": False, "aum": False, "loss": False,
                                            "confident_learning": False, "loss+validation": True}
  assert "in every round (run.train_on_validation" in markdown and ": loss+validation." in markdown


@pytest.mark.parametrize("flags, message", [
    (["--seeds=1,x"], "--seeds='1,x': expected comma-separated integers"),
    (["--gin.benchmark.strategies=['nope']"], "recovery strategy 'nope' is unknown"),
])
def test_bad_benchmark_flags_fail_with_one_line(tiny_suite, tmp_path, flags, message, capsys):
  out = tmp_path / "never"
  assert gbair_in_process("benchmark", f"--gin_file={tiny_suite}", f"--output_dir={out}",
                          *flags) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("gbair: error: ") and message in err[0], err
  assert not out.exists()


@pytest.mark.parametrize("suite", sorted(f for f in os.listdir(os.path.join(REPO, "gin", "benchmarks"))
                                         if f.endswith(".gin") and f not in ("quick.gin", "common.gin")))
def test_every_suite_parses_with_and_without_quick(suite):
  import gin
  from gbair_jax import config as config_lib
  path = os.path.join("gin", "benchmarks", suite)
  header = open(os.path.join(REPO, path)).read()
  assert f"gbair benchmark --gin_file={path}" in header  # the docstring holds the command
  for files in ([path], [path, benchmark.QUICK_GIN]):
    config_lib.parse_gin(files)
    seeds = gin.query_parameter("benchmark.seeds")
    assert len(seeds) >= (1 if len(files) == 2 else 5)
    if len(files) == 2:
      assert all(s < 100 for s in seeds), "--quick runs on development seeds only"
    else:
      assert all(s >= 100 for s in seeds), "suites report on seeds >= 100"
    assert "loss" in gin.query_parameter("benchmark.strategies")
    gin.clear_config()


def test_fix_value_reads_a_benchmarks_first_rounds(tmp_path):
  from benchmarks import fix_value  # pylint: disable=g-import-not-at-top
  seed = tmp_path / "seed_7"
  losses = {10: 0.1, 11: 0.9, 12: 0.5, 13: 0.7}  # percentiles 0, .75, .25, .5
  changes = {"loss": [(11, True), (13, False)], "vote": [(12, True), (10, True), (13, False)]}
  for strategy, picked in changes.items():
    run = seed / strategy
    (run / "round_0").mkdir(parents=True)
    (run / "round_0" / "suspects.jsonl").write_text("".join(
        json.dumps({"example_id": i, "was_corrupted": c}) + "\n" for i, c in picked))
    auc = {"loss": 0.80, "vote": 0.75}[strategy]
    (run / "report.json").write_text(json.dumps({"rounds": [{"test": {"auc": 0.7}},
                                                            {"test": {"auc": auc}}]}))
  np.savez(seed / "loss" / "round_0" / "scores.npz", example_id=np.array(list(losses)),
           score=np.array(list(losses.values())))
  stage = seed / "vote" / "references" / "unchanged_labels" / "stage_1"
  stage.mkdir(parents=True)
  (stage / "metrics.json").write_text(json.dumps({"test": {"auc": 0.72}}))
  got = fix_value.fix_value(str(tmp_path))
  assert got["loss"]["seeds"]["seed_7"] == pytest.approx(
      {"right": 1, "wrong": 1, "right_loss_percentile": 0.75, "wrong_loss_percentile": 0.5,
       "round1_minus_unchanged_auc": 0.08})
  vote = got["vote"]["mean"]
  assert (vote["right"], vote["right_loss_percentile"]) == (2, pytest.approx(0.125))
  assert vote["round1_minus_unchanged_auc"] == pytest.approx(0.03)


def _setting(tmp_path, suite: str, default_lead: float, classes: int = 2,
             below_round0: int = 0, recovered: float | None = None, baselines=("loss", "confident_learning")):
  """A finished benchmark directory of `suite` over five seeds whose default strategy leads
  each baseline by `default_lead` (plus a per-seed wobble), written through the real summarize."""
  seeds = [110, 111, 112, 113, 114]
  strategies = [benchmark.default_strategy(), *baselines]
  wobble = [0.004, -0.003, 0.002, -0.001, 0.0]
  runs = {s: {name: {"final_test_auc": 0.80 + (default_lead + wobble[k] if i == 0 else 0.0),
                     "round0_test_auc": 0.78, "recovered_share": recovered if i == 0 else None,
                     "final_not_below_round0": not (i == 0 and k < below_round0)}
                 for i, name in enumerate(strategies)} for k, s in enumerate(seeds)}
  data = types.SimpleNamespace(task=suite, label_names=tuple("abc"[:classes]))
  out = tmp_path / suite
  out.mkdir()
  (out / "benchmark.json").write_text(json.dumps(
      benchmark.summarize(runs, strategies, seeds, suite, data, num_resamples=200)))
  return str(out)


def test_issue_targets_judges_every_target(tmp_path, capsys):
  from benchmarks import issue_targets  # pylint: disable=g-import-not-at-top
  dirs = [_setting(tmp_path, "insults_uniform", 0.02, recovered=0.84),
          _setting(tmp_path, "insults_class_conditional", 0.02),
          _setting(tmp_path, "insults_instance_dependent", 0.01),
          _setting(tmp_path, "rotten_tomatoes_uniform", 0.0),
          _setting(tmp_path, "tweets_uniform", 0.0, classes=3)]
  rows = [issue_targets.setting_row(issue_targets.load(d)) for d in dirs]
  assert issue_targets.verdicts(rows) == {
      "mean_at_or_above_baselines": "met", "intervals_above_zero": "met",
      "recovered_share": "met", "no_run_below_round0": "met",
      "settings_with_intervals_above_zero": 3, "missing_settings": []}
  issue_targets.main(dirs + ["--markdown"])
  printed = capsys.readouterr().out
  assert "| insults_uniform (fresh; 110,111,112,113,114) | 0.820 | 0.800 | 0.800 |" in printed
  assert json.loads(printed.splitlines()[-1])["verdicts"]["intervals_above_zero"] == "met"

  # Each target fails on its own: a setting behind a baseline, a run below round 0, too
  # little recovered, only two settings clear of zero.
  (tmp_path / "f").mkdir()
  failing = [_setting(tmp_path / "f", "insults_uniform", 0.02, recovered=0.7, below_round0=1),
             _setting(tmp_path / "f", "insults_class_conditional", 0.02),
             _setting(tmp_path / "f", "insults_instance_dependent", 0.0),
             _setting(tmp_path / "f", "rotten_tomatoes_uniform", -0.01),
             _setting(tmp_path / "f", "tweets_uniform", 0.0, classes=3)]
  verdicts = issue_targets.verdicts([issue_targets.setting_row(issue_targets.load(d))
                                     for d in failing])
  assert [verdicts[k] for k in ("mean_at_or_above_baselines", "intervals_above_zero",
                                "recovered_share", "no_run_below_round0")] == ["not met"] * 4


def test_issue_targets_leaves_what_was_not_run_undecided(tmp_path):
  from benchmarks import issue_targets  # pylint: disable=g-import-not-at-top
  # Two settings, both clear of zero where measured, one without confident learning and no
  # clean reference: nothing is decided yet, and the missing settings are named.
  dirs = [_setting(tmp_path, "insults_uniform", 0.02),
          _setting(tmp_path, "rotten_tomatoes_uniform", 0.02, baselines=("loss",))]
  verdicts = issue_targets.verdicts([issue_targets.setting_row(issue_targets.load(d))
                                     for d in dirs])
  assert verdicts["missing_settings"] == ["insults_class_conditional", "insults_instance_dependent",
                                          "a task with more than two classes"]
  assert {verdicts[k] for k in ("mean_at_or_above_baselines", "intervals_above_zero",
                                "recovered_share", "no_run_below_round0")} == {"not measured"}
  # An interval above zero from fewer than five seeds does not count.
  row = issue_targets.setting_row(issue_targets.load(dirs[0]))
  five_settings = lambda r: [r] * 3 + [dict(r, suite="rotten_tomatoes_uniform"),
                                       dict(r, suite="t", classes=3)]
  assert issue_targets.verdicts(five_settings(row))["intervals_above_zero"] == "met"
  row["seeds"] = row["seeds"][:2]
  assert issue_targets.verdicts(five_settings(row))["intervals_above_zero"] == "not measured"
  with pytest.raises(SystemExit, match="nothing_here/benchmark.json does not exist"):
    issue_targets.load(str(tmp_path / "nothing_here"))
