"""class_vote_embedding (recovery/embedding_vote.py): the class vote on frozen sentence
embeddings, checked against its definition one training example at a time."""
import numpy as np
import pytest

from gbair_jax.errors import UserError
from gbair_jax.models.llama import tiny_llama
from gbair_jax.models.t5 import tiny_t5
from gbair_jax.recovery import embedding_vote
from gbair_jax.recovery.context import RoundContext
from tests.helpers import (initial_prompt_context, synthetic_split,
                           synthetic_three_class_split, tiny_experiment)


def _one_embedding(exp, arrays, i):
  """The backbone's sentence embedding of row i alone (no batching, no padding trim)."""
  return np.asarray(exp.spec.backbone.module.apply(
      {"params": exp.frozen}, arrays["tokens"][i:i + 1], arrays["mask"][i:i + 1],
      method="sentence_embeddings"), np.float64)[0]


def _by_definition(ctx, exp, neighbours, with_train):
  train, validation = ctx.train, ctx.validation
  num_classes = len(exp.spec.label_names)
  cand = np.stack([_one_embedding(exp, train, i) for i in range(len(train["label"]))])
  voters = np.stack([_one_embedding(exp, validation, i) for i in range(len(validation["label"]))])
  voter_labels = validation["label"]
  if with_train:
    voters, voter_labels = np.concatenate([voters, cand]), np.concatenate([voter_labels,
                                                                          train["label"]])
  centre = voters.mean(axis=0)
  unit = lambda x: (x - centre) / np.linalg.norm(x - centre)
  scores = []
  for i, label in enumerate(train["label"]):
    logits = ctx.train_logits[i].copy()
    logits[label] = -np.inf
    other = 1 - label if num_classes == 2 else int(np.argmax(logits))
    votes = {}
    for k in (label, other):
      sims = [unit(cand[i]) @ unit(v) for j, v in enumerate(voters)
              if voter_labels[j] == k and not (with_train and j == len(validation["label"]) + i)]
      sims = sorted(sims, reverse=True)[:neighbours]
      votes[k] = np.mean(sims)
    scores.append(votes[other] - votes[label])
  return np.array(scores)


@pytest.mark.parametrize("split,labels", [(synthetic_split, ("negative", "positive")),
                                          (synthetic_three_class_split,
                                           ("negative", "neutral", "positive"))])
@pytest.mark.parametrize("voters", ["validation", "validation_and_train"])
def test_the_vote_matches_its_definition(split, labels, voters):
  exp = tiny_experiment(labels, split, num_train=20, corrupt=5)
  ctx = initial_prompt_context(exp)
  for neighbours in (3, None):
    got = embedding_vote.embedding_vote_scores(ctx, neighbours, center=True, voters=voters)
    expected = _by_definition(ctx, exp, neighbours or 10_000, voters == "validation_and_train")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make_backbone", [tiny_t5, tiny_llama], ids=["t5", "llama"])
def test_every_backbone_has_a_padding_blind_unit_sentence_embedding(make_backbone):
  """T5 and the decoders mean-pool their last hidden states: the vote runs on them too,
  by its definition, and what sits in padded positions never reaches the embedding."""
  exp = tiny_experiment(("negative", "positive"), synthetic_split, num_train=12, corrupt=3,
                        backbone=make_backbone())
  ctx = initial_prompt_context(exp)
  got = embedding_vote.embedding_vote_scores(ctx, 3, center=True, voters="validation")
  np.testing.assert_allclose(got, _by_definition(ctx, exp, 3, False), rtol=1e-5, atol=1e-6)
  embed = lambda t, m: np.asarray(exp.spec.backbone.module.apply(
      {"params": exp.frozen}, t, m, method="sentence_embeddings"))
  short = ctx.train["tokens"][:4, :8]
  unit = embed(short, np.ones_like(short))
  np.testing.assert_allclose(np.linalg.norm(unit, axis=-1), 1.0, atol=1e-5)
  assert not np.allclose(unit[0], unit[1], atol=1e-3)  # rows differ: not a constant
  # The same texts with 4 padded positions holding other tokens.
  padded = np.concatenate([short, np.full((4, 4), 7, short.dtype)], axis=1)
  mask = np.concatenate([np.ones_like(short), np.zeros((4, 4), short.dtype)], axis=1)
  np.testing.assert_allclose(embed(padded, mask), unit, atol=1e-5)


def test_bad_settings_and_a_backbone_without_sentence_embeddings_are_refused():
  exp = tiny_experiment(("negative", "positive"), synthetic_split, num_train=8, corrupt=2)
  ctx = initial_prompt_context(exp)
  with pytest.raises(UserError, match="voters='everyone' is unknown"):
    embedding_vote.embedding_vote_scores(ctx, voters="everyone")
  with pytest.raises(UserError, match="neighbours = 0"):
    embedding_vote.embedding_vote_scores(ctx, neighbours=0)

  class NoSentences:  # a backbone without a sentence_embeddings method
    name = "decoder"
    module = object()
  spec = type("Spec", (), {"backbone": NoSentences(), "label_names": ("a", "b")})()
  with pytest.raises(UserError, match="'decoder' has none"):
    embedding_vote.sentence_embeddings(
        RoundContext(spec=spec, frozen=None, train=ctx.train, validation=ctx.validation,
                     checkpoints=[], final_prompt=None, train_logits=None,
                     validation_logits=None, seed=0), ctx.train)


def test_voters_are_scored_with_themselves_left_out():
  """The calibration's samples: every validation voter voted on by the others, at its own
  label (clean) and as if labelled with the other class (flipped)."""
  exp = tiny_experiment(("negative", "positive"), synthetic_split, num_train=12, corrupt=3)
  ctx = initial_prompt_context(exp)
  vote = embedding_vote.embedding_vote(ctx, neighbours=4)
  labels = ctx.validation["label"]
  feats = np.stack([_one_embedding(exp, ctx.validation, i) for i in range(len(labels))])
  feats = feats - feats.mean(axis=0)
  feats /= np.linalg.norm(feats, axis=1, keepdims=True)
  def vote_for(j, k):
    sims = sorted((feats[j] @ feats[i] for i in range(len(labels)) if labels[i] == k and i != j),
                  reverse=True)
    return np.mean(sims[:4])
  as_label = lambda a: np.array([vote_for(j, 1 - a) - vote_for(j, a) for j in range(len(labels))])
  for a in (0, 1):
    clean, flipped = vote.voter_scores[(a, 1 - a)]
    np.testing.assert_allclose(clean, as_label(a)[labels == a], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flipped, as_label(a)[labels == 1 - a], rtol=1e-5, atol=1e-6)


def test_the_calibrated_vote_runs_in_embedding_space(tmp_path):
  import gin
  import json
  import os
  from gbair_jax.recovery import loop
  exp = tiny_experiment(("negative", "positive"), synthetic_split, num_train=48, corrupt=12)
  gin.parse_config("train_prompt.num_epochs = 1\ntrain_prompt.tensorboard = False\n"
                   "selection_size.select_count = 6\n"
                   "class_vote_calibrated_strategy.space = 'embedding'")
  out = str(tmp_path / "run")
  report = loop.run(out, num_rounds=1, strategy="class_vote_calibrated", references=(),
                    experiment=exp, progress=False)
  cells = json.load(open(os.path.join(out, "round_0", "calibration.json")))["cells"]
  assert {(c["label"], c["other"]) for c in cells} == {(0, 1), (1, 0)}
  scores = np.load(os.path.join(out, "round_0", "scores.npz"))["score"]
  # Only suspects are finite, and the round changed at most the budget of them.
  assert report["rounds"][0]["selected"] <= min(6, int(np.isfinite(scores).sum()))
  gin.clear_config()
  gin.parse_config("class_vote_calibrated_strategy.space = 'words'")
  with pytest.raises(UserError, match="space='words' is unknown"):
    loop.run(str(tmp_path / "bad"), num_rounds=1, strategy="class_vote_calibrated",
             references=(), experiment=exp, progress=False)
