"""A tiny 3-class run paused for review by `gbair run --review`, shared by the review tests.

Its training texts include `<script>` and `<img onerror>` markup (the page must show them as
text), its example ids are 64-bit hashes (they must travel as strings), and 100 suspects
are proposed (the page's timing target is about 100 suspects with evidence).
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = ("negative", "neutral", "positive")
WORDS = (["bad", "awful", "poor", "terrible", "nasty", "ugly"],
         ["okay", "average", "plain", "fair", "middling", "usual"],
         ["good", "great", "fine", "lovely", "superb", "nice"])
SCRIPT = "<script>alert(1)</script>"
IMG = '<img src=x onerror="alert(2)">'
NUM_SUSPECTS = 100


def write_data(path: str, num: int = 300, seed: int = 0) -> None:
  rng = np.random.default_rng(seed)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["text", "label"])
    for n in range(num):
      label = int(rng.integers(0, 3))
      words = rng.choice(WORDS[label], 3).tolist() + ["the", "film"]
      rng.shuffle(words)
      text = " ".join(words)
      if n % 10 == 3:
        text += " " + SCRIPT
      elif n % 10 == 7:
        text += " " + IMG
      writer.writerow([text, LABELS[label]])


def gin_text(data_path: str) -> str:
  return f"""
include 'gin/models/tiny_bert.gin'
include 'gin/data/user_csv.gin'
import gbair_jax.recovery.loop
USER_TRAIN_FILE = '{data_path}'
USER_LABEL_NAMES = {LABELS!r}
CORRUPTION_RATE = 0.25
build_classifier.prompt_length = 4
build_experiment.sequence_length = 16
train_prompt.num_epochs = 2
train_prompt.batch_size = 16
train_prompt.tensorboard = False
selection_size.select_count = {NUM_SUSPECTS}
tracin_opponents.top_k = 8
run.num_rounds = 2
run.strategy = 'tracin_opponents'
run.references = ('no_recovery',)
"""


def gbair(*args, check=True, timeout=600):
  proc = subprocess.run([sys.executable, "-m", "gbair_jax.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  if check and proc.returncode != 0:
    raise AssertionError(f"gbair {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
  return proc


def build_paused_run(root) -> dict:
  """Writes the data and gin file under `root` and runs `gbair run ... --review` there."""
  root = str(root)
  data = os.path.join(root, "data.csv")
  write_data(data)
  gin_file = os.path.join(root, "review_run.gin")
  with open(gin_file, "w") as f:
    f.write(gin_text(data))
  output_dir = os.path.join(root, "run")
  args = ["run", f"--gin_file={gin_file}", f"--output_dir={output_dir}", "--review"]
  proc = gbair(*args)
  return {"root": root, "gin_file": gin_file, "output_dir": output_dir, "args": args,
          "stdout": proc.stdout}
