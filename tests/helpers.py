"""Shared fixtures' builders: a tiny synthetic sentiment task on the tiny random BERT."""
from __future__ import annotations

import socket
import sys

import numpy as np

# Short trainings for strategy tests (gin; a test adds its own selection size).
SMALL_TRAINING_GIN = ("train_prompt.num_epochs = 2\ntrain_prompt.batch_size = 16\n"
                      "train_prompt.tensorboard = False\n")

POSITIVE = ["good", "great", "fine", "lovely", "superb", "nice"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "nasty", "ugly"]
NEUTRAL = ["plain", "usual", "average", "normal", "okay", "standard"]


def synthetic_split(num: int, seed: int, id_offset: int = 0, corrupt: int = 0) -> dict[str, np.ndarray]:
  """Texts made of sentiment words; label 1 = positive. `corrupt` flips the first rows."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, num).astype(np.int32)
  texts = []
  for label in labels:
    words = rng.choice(POSITIVE if label else NEGATIVE, 3).tolist() + ["the", "movie"]
    rng.shuffle(words)
    texts.append(" ".join(words))
  label = labels.copy()
  label[:corrupt] = 1 - label[:corrupt]
  return {"example_id": np.arange(id_offset, id_offset + num, dtype=np.int64),
          "text": np.array(texts, dtype=object), "label": label, "original_label": labels,
          "is_corrupted": np.arange(num) < corrupt}


def synthetic_three_class_split(num: int, seed: int, id_offset: int = 0,
                                 corrupt: int = 0) -> dict[str, np.ndarray]:
  """Three-class texts: label 0 negative, 1 neutral, 2 positive words. `corrupt` moves the
  first rows' labels to another class (+1 or +2 modulo 3, alternating)."""
  rng = np.random.default_rng(seed)
  labels = (np.arange(num) % 3)[rng.permutation(num)].astype(np.int32)
  texts = []
  for label in labels:
    words = rng.choice((NEGATIVE, NEUTRAL, POSITIVE)[label], 3).tolist() + ["the", "movie"]
    rng.shuffle(words)
    texts.append(" ".join(words))
  label = labels.copy()
  label[:corrupt] = (label[:corrupt] + 1 + np.arange(corrupt) % 2) % 3
  return {"example_id": np.arange(id_offset, id_offset + num, dtype=np.int64),
          "text": np.array(texts, dtype=object), "label": label, "original_label": labels,
          "is_corrupted": np.arange(num) < corrupt}


def free_port() -> int:
  """A free TCP port on localhost (for a local JAX coordinator)."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def logistic_loss(prompt, frozen, batch, per_example_prompt=None):
  """Logistic regression behind the TracIn engine's loss contract (weights = prompt), whose
  gradients are known in closed form: (sigmoid(w.x + b) - y) x."""
  import jax  # pylint: disable=g-import-not-at-top  (keeps helpers importable without JAX)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = batch["features"]
  weights = (prompt.reshape(1, -1) if per_example_prompt is None
             else per_example_prompt.reshape(x.shape[0], -1))
  logits = jnp.sum(x * weights, axis=1) + frozen["bias"]
  return jax.nn.softplus(logits) - batch["label"].astype(jnp.float32) * logits


def write_sentiment_csv(path, num: int = 120, seed: int = 0) -> None:
  """A CSV (text, label names) of `synthetic_split`: the user-file input of CLI tests."""
  import csv  # pylint: disable=g-import-not-at-top
  split = synthetic_split(num, seed)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["text", "label"])
    for text, label in zip(split["text"], split["label"]):
      writer.writerow([text, ["negative", "positive"][label]])


def write_tiny_run_gin(path, data_path, num_epochs: int = 2, extra: str = "",
                       label_names=("negative", "positive"), corruption_rate: float = 0.25,
                       batch_size: int = 8) -> str:
  """A gin file for a seconds-long `gbair run` of the tiny BERT on `data_path`; `extra`
  holds the test's own bindings (rounds, references, a benchmark suite, ...)."""
  path.write_text(f"""
include 'gin/models/tiny_bert.gin'
include 'gin/data/user_csv.gin'
import gbair_jax.recovery.loop
USER_TRAIN_FILE = '{data_path}'
USER_LABEL_NAMES = {tuple(label_names)!r}
CORRUPTION_RATE = {corruption_rate}
build_classifier.prompt_length = 4
build_experiment.sequence_length = 12
train_prompt.num_epochs = {num_epochs}
train_prompt.batch_size = {batch_size}
selection_size.select_count = 5
tracin_opponents.top_k = 8
{extra}""")
  return str(path)


def tiny_experiment(label_names, split, num_train: int = 48, corrupt: int = 12, backbone=None):
  """An Experiment on the tiny BERT (or `backbone`, a PretrainedBackbone): `split`
  (synthetic_split or the three-class one) gives `num_train` training rows with `corrupt`
  flipped, 32 validation and 24 test rows."""
  from gbair_jax.data.dataset import LabeledData  # pylint: disable=g-import-not-at-top
  from gbair_jax.models.bert import tiny_bert  # pylint: disable=g-import-not-at-top
  from gbair_jax.models.classifier import build_classifier  # pylint: disable=g-import-not-at-top
  from gbair_jax.train.experiment import Experiment  # pylint: disable=g-import-not-at-top
  backbone = backbone or tiny_bert()
  data = LabeledData(task="synthetic", label_names=label_names, splits={
      "train": split(num_train, 0, corrupt=corrupt), "validation": split(32, 1, 1000),
      "test": split(24, 2, 2000)})
  return Experiment(data=data, spec=build_classifier(backbone, label_names, prompt_length=4),
                    frozen=backbone.load_params(), sequence_length=12)


def initial_prompt_context(exp, batch_size: int = 8):
  """A RoundContext of `exp` (tiny_experiment) at its untrained initial prompt, as the only
  checkpoint: what a strategy sees, without training anything."""
  import jax  # pylint: disable=g-import-not-at-top
  from gbair_jax.recovery.context import RoundContext  # pylint: disable=g-import-not-at-top
  from gbair_jax.train.trainer import predict_logits  # pylint: disable=g-import-not-at-top
  tokens = exp.tokenized_splits()
  prompt = np.asarray(exp.spec.initial_prompt(jax.random.PRNGKey(0), exp.frozen))
  return RoundContext(spec=exp.spec, frozen=exp.frozen, train=tokens["train"],
                      validation=tokens["validation"], checkpoints=[(prompt, 1.0)],
                      final_prompt=prompt,
                      train_logits=predict_logits(exp.spec, prompt, exp.frozen, tokens["train"]),
                      validation_logits=predict_logits(exp.spec, prompt, exp.frozen,
                                                       tokens["validation"]),
                      seed=0, batch_size=batch_size, progress=False)


def gbair_in_process(*args) -> int:
  """`gbair ARGS` through the console entry point in this process: its exit code (stdout and
  stderr go to pytest's capsys). Seconds cheaper than a subprocess, which first imports
  TensorFlow: for tests of what a command does, not of the process itself (locking, kill
  and resume, start-up noise use subprocesses)."""
  import gin  # pylint: disable=g-import-not-at-top
  from gbair_jax import main  # pylint: disable=g-import-not-at-top
  argv = sys.argv
  sys.argv = ["gbair", *args]
  try:
    main.run()
    code = 0
  except SystemExit as e:
    code = e.code or 0
  finally:
    sys.argv = argv
    gin.clear_config()
  return code
