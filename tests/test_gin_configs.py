"""Run configs are built on gin/runs/base.gin, and the paper's configs state the paper's
own choices instead of inheriting the quickstart's demo settings."""
import os
import re

import gin
import pytest

from gbair_jax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = os.path.join(REPO, "gin", "runs")


def _includes(path: str) -> list[str]:
  with open(path) as f:
    return re.findall(r"^include '([^']+)'", f.read(), flags=re.M)


@pytest.mark.parametrize("name", ["paper_bbf_t5_xl.gin", "paper_bbf_t5_xxl.gin"])
def test_paper_configs_state_the_papers_choices(name):
  assert "gin/runs/quickstart.gin" not in _includes(os.path.join(RUNS, name))
  config_lib.parse_gin([f"gin/runs/{name}"])
  assert gin.query_parameter("tracin_opponents.queries") == "misclassified"
  assert gin.query_parameter("tracin_opponents.aggregation") == "count"
  assert gin.query_parameter("build_classifier.prompt_length") == 100
  assert gin.query_parameter("make_optimizer.name") == "adafactor"
  assert gin.query_parameter("build_experiment.partition_frozen") is True
  # The paper's plain rounds, not the default gated class vote of base.gin.
  assert gin.query_parameter("run.strategy") == "tracin_opponents"
  assert gin.query_parameter("run.gate") is False
  assert gin.query_parameter("run.train_on_validation") is False  # training split only
  assert gin.query_parameter("train_prompt.ensemble_size") == 1    # one prompt


def test_quickstart_runs_the_default_policy():
  config_lib.parse_gin(["gin/runs/quickstart.gin"])
  assert gin.query_parameter("run.strategy") == "class_vote_embedding"
  assert gin.query_parameter("run.gate") is True
  assert gin.query_parameter("run.train_on_validation") is True
  # ... with one prompt, to fit its 10-minute CPU budget (base.gin's default trains three).
  assert gin.query_parameter("train_prompt.ensemble_size") == 1


@pytest.mark.parametrize("suite", ["insults_uniform", "insults_class_conditional",
                                   "insults_instance_dependent", "rotten_tomatoes_uniform",
                                   "tweet_sentiment_uniform"])
def test_benchmark_suites_train_the_default_ensembles(suite):
  """The suites measure `gbair run`'s default policy, seed ensembles included; --quick
  (a smoke test) trains one prompt."""
  config_lib.parse_gin([f"gin/benchmarks/{suite}.gin"])
  assert gin.query_parameter("train_prompt.ensemble_size") == 3
  # The default against the two baselines the bars name, and nothing more: each extra
  # strategy costs about as much again and the suite must fit 2 hours on 2 cores.
  assert list(gin.query_parameter("benchmark.strategies")) == [
      gin.query_parameter("run.strategy"), "loss", "confident_learning"]
  config_lib.parse_gin([f"gin/benchmarks/{suite}.gin", "gin/benchmarks/quick.gin"])
  assert gin.query_parameter("train_prompt.ensemble_size") == 1


def test_quickstart_and_paper_share_the_base():
  for name in ("quickstart.gin", "paper_bbf_base.gin"):
    assert "gin/runs/base.gin" in _includes(os.path.join(RUNS, name)), name


@pytest.mark.parametrize("path", sorted(
    [f"gin/runs/{n}" for n in os.listdir(RUNS)] +
    [f"gin/benchmarks/{n}" for n in os.listdir(os.path.join(REPO, "gin", "benchmarks"))
     if n != "common.gin"]))
def test_training_on_validation_always_keeps_a_gate_slice_out(path):
  """run.train_on_validation without run.gate is refused at run time; no shipped config
  may bind it that way (the paper's plain rounds must turn both off)."""
  config_lib.parse_gin([path])
  try:
    on = gin.query_parameter("run.train_on_validation")
  except ValueError:
    on = False
  assert not on or gin.query_parameter("run.gate") is True


def test_review_config_runs_plain_rounds():
  """`gbair run --review` refuses gated rounds: the README's review command uses this file."""
  config_lib.parse_gin(["gin/runs/quickstart_review.gin"])
  assert gin.query_parameter("run.gate") is False
  assert gin.query_parameter("run.strategy") == "class_vote_embedding"
  with open(os.path.join(REPO, "README.md")) as f:
    assert "gbair run --gin_file=gin/runs/quickstart_review.gin --output_dir=runs/reviewed --review" in f.read()
