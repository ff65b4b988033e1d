"""What the README's "What is guaranteed" section promises, one test per promise:
the run directory is locked, the data fingerprinted, input validated before anything is
written, the ledger checked on every read, and what is not understood refused in one line.

A tiny random BERT on a small CSV written here; the real `gbair` runs in subprocesses
where the command itself is under test (locking, start-up noise), in-process otherwise.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import gin
import numpy as np
import pytest

from gbair_jax.errors import UserError
from tests.helpers import gbair_in_process as gbair
from tests.helpers import write_sentiment_csv, write_tiny_run_gin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GBAIR = [sys.executable, "-m", "gbair_jax.main"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _gin_file(root, data_path, name="tiny.gin"):
  return write_tiny_run_gin(root / name, data_path, extra="""
train_prompt.tensorboard = False
run.num_rounds = 1
run.strategy = 'tracin_opponents'
run.references = ('no_recovery',)
""")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(gin file, a finished run of it): tests copy the run and change the copy."""
  root = tmp_path_factory.mktemp("guarantees")
  write_sentiment_csv(root / "data.csv")
  config = _gin_file(root, root / "data.csv")
  finished = str(root / "finished")
  proc = subprocess.run([*GBAIR, "run", f"--gin_file={config}", f"--output_dir={finished}"],
                        cwd=REPO, capture_output=True, text=True, timeout=600, env=ENV)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return config, finished


def _bind_user_files(path, label_names=("negative", "positive")):
  from gbair_jax.data import user_files  # noqa: F401  (registers the configurable)
  import tasks  # noqa: F401  (registers the user_files task)
  gin.bind_parameter("user_files_options.train_path", str(path))
  gin.bind_parameter("user_files_options.label_names", label_names)


def copy_run(source, target):
  shutil.copytree(source, target, ignore=shutil.ignore_patterns(".gbair.lock"))
  return str(target)


def read(path):
  with open(path) as f:
    return f.read()


def rounds_of(run_dir):
  report = json.loads(read(os.path.join(run_dir, "report.json")))
  return [{k: v for k, v in r.items() if k != "seconds"} for r in report["rounds"]]


# 1. Two processes on one output_dir: the second is refused at once, naming the holder; a
#    kill -9 leaves no stale lock, and the run resumes mid-round to the same ledger and
#    report as an unkilled one; a round cannot be appended twice.
def test_second_process_is_refused_and_kill_leaves_no_stale_lock(setup, tmp_path):
  config, finished = setup
  out = str(tmp_path / "shared")
  args = ["run", f"--gin_file={config}", f"--output_dir={out}"]
  first = subprocess.Popen([*GBAIR, *args], cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=ENV)
  try:
    deadline = time.time() + 300
    # Stopped while round 1 trains: round 0 selected and wrote the ledger, round 1 has its
    # first epoch on disk and is not finished.
    while not os.path.exists(os.path.join(out, "round_1", "checkpoints", "1")):
      assert first.poll() is None and time.time() < deadline, "first run never trained"
      time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)  # holds the lock, mid-run, however slow the machine
    second = subprocess.run([*GBAIR, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env=ENV)
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  assert second.returncode == 2
  lines = second.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("gbair: error:"), second.stderr
  assert f"in use by process {first.pid}" in lines[0]
  assert not os.path.exists(os.path.join(out, "report.json"))
  # The kill -9 released the lock: the same command resumes and ends like an unkilled run.
  resumed = subprocess.run([*GBAIR, *args], cwd=REPO, capture_output=True, text=True,
                           timeout=600, env=ENV)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert read(os.path.join(out, "ledger.jsonl")) == read(os.path.join(finished, "ledger.jsonl"))
  assert rounds_of(out) == rounds_of(finished)
  assert [r["selected"] for r in rounds_of(out)] == [5, 0]
  report, want = (json.loads(read(os.path.join(d, "report.json"))) for d in (out, finished))
  assert report["references"] == want["references"]


def test_a_round_cannot_be_appended_twice(tmp_path):
  from gbair_jax.data import ledger
  path = str(tmp_path / "ledger.jsonl")
  entries = [ledger.LedgerEntry(0, 1, 0, 1, 0.5, "loss")]
  ledger.append_round(path, 0, entries)
  with pytest.raises(UserError, match="already holds entries of round 0"):
    ledger.append_round(path, 0, entries)
  assert len(read(path).splitlines()) == 1


def test_lock_refuses_a_second_holder_in_process(tmp_path):
  from gbair_jax.runtime import files
  with files.locked(str(tmp_path)):
    with pytest.raises(UserError, match=f"in use by process {os.getpid()}"):
      files.RunLock(str(tmp_path)).acquire()
  files.RunLock(str(tmp_path)).acquire().release()  # released: free again


# 2. A source file edited in place is noticed: the rerun is refused like a different config.
def test_edited_source_file_is_refused(tmp_path, capsys):
  data = tmp_path / "data.csv"
  write_sentiment_csv(data, num=96)
  config = _gin_file(tmp_path, data)
  out = str(tmp_path / "run")
  args = ["train", f"--gin_file={config}", f"--output_dir={out}",
          "--gin.train_prompt.num_epochs=1"]
  assert gbair(*args) == 0
  before = sorted(os.listdir(out))
  rows = read(data).splitlines()
  data.write_text("\n".join(rows[:49]) + "\n")  # 48 examples left
  capsys.readouterr()
  assert gbair(*args) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "data differ" in err[0] and "examples then" in err[0], err
  # Same size, labels swapped: refused too.
  swapped = [rows[0]] + [r.replace("negative", "@").replace("positive", "negative")
                         .replace("@", "positive") for r in rows[1:]]
  data.write_text("\n".join(swapped) + "\n")
  assert gbair(*args) == 2
  assert "data differ" in capsys.readouterr().err
  assert sorted(os.listdir(out)) == before


# 3. Killed between the ledger append and round.json: the round is summarised from its
#    ledger entries (built here as that on-disk state), not selected again.
def test_kill_between_ledger_append_and_round_json(setup, tmp_path, capsys):
  config, finished = setup
  out = copy_run(finished, tmp_path / "killed")
  os.remove(os.path.join(out, "round_0", "round.json"))
  shutil.rmtree(os.path.join(out, "round_1"))
  for name in ("report.json", "report.md"):
    os.remove(os.path.join(out, name))
  assert gbair("run", f"--gin_file={config}", f"--output_dir={out}") == 0
  assert read(os.path.join(out, "ledger.jsonl")) == read(os.path.join(finished, "ledger.jsonl"))
  assert rounds_of(out) == rounds_of(finished)
  assert read(os.path.join(out, "round_0", "suspects.jsonl")) == read(
      os.path.join(finished, "round_0", "suspects.jsonl"))


# 4. Bad input writes nothing: validated before output_dir is claimed, so the corrected
#    command can use the same directory.
BAD_INPUT = [("--gin.CORRUPTION_RATE=1.5", "CORRUPTION_RATE"),
             ("--gin.selection_size.select_count=1000", "select_count=1000"),
             ("--gin.USER_LABEL_NAMES=('neg', 'pos')", "is not one of")]


@pytest.mark.parametrize("command, flag, message", [
    (command, flag, message) for command in ("run", "train", "compare")
    for flag, message in BAD_INPUT if not (command == "train" and "select_count" in flag)])
def test_bad_input_writes_nothing(setup, tmp_path, capsys, command, flag, message):
  config, _ = setup
  out = tmp_path / "out"
  extra = ["--strategies=loss"] if command == "compare" else []
  assert gbair(command, f"--gin_file={config}", f"--output_dir={out}", flag, *extra) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and message in err[0], err
  assert not out.exists()


def test_corrected_command_uses_the_same_directory(setup, tmp_path, capsys):
  config, _ = setup
  out = tmp_path / "out"
  args = ["train", f"--gin_file={config}", f"--output_dir={out}",
          "--gin.train_prompt.num_epochs=1"]
  assert gbair(*args, "--gin.CORRUPTION_RATE=1.5") == 2
  assert gbair(*args) == 0
  assert (out / "round_0" / "metrics.json").exists()


# 5. The ledger is checked on every start: a torn last line is repaired (and its round done
#    again), any other bad line stops the run with one line, `influence` refuses it.
def test_torn_last_ledger_line_is_repaired(setup, tmp_path, capsys):
  config, finished = setup
  out = copy_run(finished, tmp_path / "torn")
  ledger = os.path.join(out, "ledger.jsonl")
  text = read(ledger)
  with open(ledger, "w") as f:
    f.write(text[:-25])  # mid-way through the last line
  assert gbair("influence", f"--output_dir={out}", "--round=0") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "cut off" in err[0], err
  assert gbair("run", f"--gin_file={config}", f"--output_dir={out}") == 0
  assert "the last line was cut off" in capsys.readouterr().err
  assert read(ledger) == read(os.path.join(finished, "ledger.jsonl"))
  assert rounds_of(out) == rounds_of(finished)


def test_bad_ledger_line_stops_the_run(setup, tmp_path, capsys):
  config, finished = setup
  out = copy_run(finished, tmp_path / "bad")
  ledger = os.path.join(out, "ledger.jsonl")
  lines = read(ledger).splitlines(keepends=True)
  lines[1] = lines[1].replace('"old_label"', '"old_lable"')
  with open(ledger, "w") as f:
    f.writelines(lines)
  report = read(os.path.join(out, "report.json"))
  assert gbair("run", f"--gin_file={config}", f"--output_dir={out}") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "line 2" in err[0], err
  # A duplicated line (two processes appending) does not fit the data either.
  lines = read(os.path.join(finished, "ledger.jsonl")).splitlines(keepends=True)
  with open(ledger, "w") as f:
    f.writelines(lines + lines[-1:])
  assert gbair("run", f"--gin_file={config}", f"--output_dir={out}") == 2
  assert "ledger entry of round 0" in capsys.readouterr().err
  assert read(os.path.join(out, "report.json")) == report


# 6. A TSV field starting with an unclosed quote swallows no rows; rows read are printed.
def test_tsv_unclosed_quote_keeps_every_row(tmp_path):
  from gbair_jax.data import dataset, describe
  rows = [f"review {i} {'good' if i % 2 else 'bad'}\t{['negative', 'positive'][i % 2]}"
          for i in range(120)]
  rows[10] = '"an unclosed quote starts this review\tnegative'
  path = tmp_path / "data.tsv"
  path.write_text("text\tlabel\n" + "\n".join(rows) + "\n")
  _bind_user_files(path)
  data = dataset.load_data("user_files")
  assert sum(len(s["label"]) for s in data.splits.values()) == 120
  texts = [t for s in data.splits.values() for t in s["text"]]
  assert '"an unclosed quote starts this review' in texts
  assert data.rows_read == {str(path): 120}
  assert f"read 120 rows from {path}" in describe.format_description(describe.describe(data))
  gin.bind_parameter("user_files_options.tsv_quotes", True)  # asked: refused, not swallowed
  with pytest.raises(UserError, match="row 11, column 'text': a quoted field holds a newline"):
    dataset.load_data("user_files")


# 7. A misspelled macro is refused with a suggestion.
def test_misspelled_macro_is_refused():
  from gbair_jax import config
  with pytest.raises(UserError, match="CORRUPTION_RATEE .* did you mean CORRUPTION_RATE"):
    config.parse_gin(["gin/runs/quickstart.gin"], ["CORRUPTION_RATEE = 0.0"])


# 8. The report's config is the one recorded at claim time: a rerun rewrites the same bytes.
def test_report_config_does_not_depend_on_resumes(setup, tmp_path):
  config, finished = setup
  out = copy_run(finished, tmp_path / "rerun")
  report = json.loads(read(os.path.join(out, "report.json")))
  assert "train_prompt.num_epochs = 2" in report["config"]
  assert "selection_size.select_count = 5" in report["config"]
  assert report["config"] == read(os.path.join(out, "config.gin"))
  assert gbair("run", f"--gin_file={config}", f"--output_dir={out}") == 0
  assert read(os.path.join(out, "report.json")) == read(os.path.join(finished, "report.json"))


# 9. `gbair influence` refuses gin flags in one line (it reads the run's config.gin).
@pytest.mark.parametrize("flag", ["--gin.run.num_rounds=1", "--gin.no_such.thing=1",
                                  "--gin_file=gin/runs/quickstart.gin"])
def test_influence_refuses_gin_flags(setup, capsys, flag):
  _, finished = setup  # a real run: without the rule, influence would run on it
  assert gbair("influence", f"--output_dir={finished}", flag) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("gbair: error:"), err
  assert flag.split("=")[0] in err[0], err


# 10. What used to be tracebacks: one line, exit 2.
def test_unusable_output_dir_is_one_line(setup, tmp_path, capsys):
  config, _ = setup
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  for out, message in [(a_file, "not a directory"), (a_file / "run", "cannot create"),
                       ("/sys/gbair_out", "cannot create")]:
    assert gbair("train", f"--gin_file={config}", f"--output_dir={out}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
  assert a_file.read_text() == "x"


# 11. An empty split is refused with the rows per class it needs; JSON never holds NaN.
def test_empty_carved_split_is_refused(tmp_path, capsys):
  data = tmp_path / "small.csv"
  data.write_text("text,label\n" + "".join(f"text {i},{['negative', 'positive'][i % 2]}\n"
                                           for i in range(8)))
  config = _gin_file(tmp_path, data)
  assert gbair("train", f"--gin_file={config}", f"--output_dir={tmp_path / 'o'}") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "split is empty" in err[0] and "at least 6 rows" in err[0], err


def test_json_files_hold_null_never_nan(tmp_path):
  from gbair_jax.report import writer

  def strict(text):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))

  metrics = {"accuracy": 0.5, "f1": float("nan"), "auc": np.float32("nan")}
  report = {"config": "", "task": "t", "strategy": "loss", "action": "relabel",
            "num_train": 10, "num_corrupted": 2, "references": {},
            "rounds": [{"round": 0, "selected": 0, "precision": None, "validation": metrics,
                        "test": metrics, "seconds": {"train": 1.0, "score": 0.0}}]}
  writer.write_report(str(tmp_path), report, ("a", "b"))
  written = strict(read(tmp_path / "report.json"))
  assert written["rounds"][0]["test"] == {"accuracy": 0.5, "f1": None, "auc": None}


# 12. run.references=None means no reference.
def test_references_none_means_none(setup, tmp_path):
  config, _ = setup
  out = tmp_path / "noref"
  assert gbair("run", f"--gin_file={config}", f"--output_dir={out}", "--gin.run.num_rounds=0",
               "--gin.run.references=None", "--gin.train_prompt.num_epochs=1") == 0
  assert json.loads(read(out / "report.json"))["references"] == {}
  assert not (out / "references").exists()


# 13. A label name no example has is an error naming it.
def test_label_without_examples_is_named(tmp_path):
  from gbair_jax.data import dataset
  path = tmp_path / "data.csv"
  write_sentiment_csv(path)
  _bind_user_files(path, ("negative", "positive", "neutral"))
  with pytest.raises(UserError, match="class 'neutral' .* no example in any split"):
    dataset.load_data("user_files")


# 14. Nothing on stderr before the error line (TensorFlow's start-up lines included).
def test_error_is_the_only_stderr_line(setup, tmp_path):
  config, _ = setup
  proc = subprocess.run([*GBAIR, "run", f"--gin_file={config}", f"--output_dir={tmp_path / 'o'}",
                         "--gin.CORRUPTION_RATE=1.5"], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env=ENV)
  assert proc.returncode == 2
  assert proc.stderr.splitlines() == [
      "gbair: error: corrupt_labels.rate (gin macro CORRUPTION_RATE) = 1.5: must be a number "
      "in [0, 1)"], proc.stderr


# Issue 10, files: a whole run, killed in the ledger/round.json window and resumed, on a
# filesystem that is not local (TensorFlow's in-memory ram://, offline): what gs:// takes.
# Orbax cannot write ram:// (epath does not know it), so checkpoints go to a local folder
# (checkpoint_location.local_root); everything else is written on ram://.
def test_whole_run_with_resume_on_a_non_local_filesystem(setup, tmp_path, capsys, monkeypatch):
  import tensorflow as tf
  from gbair_jax import main
  from gbair_jax.data import ledger as ledger_lib
  config, finished = setup
  gfile = tf.io.gfile
  out = f"ram://gbair_{os.getpid()}_{time.time_ns()}/run"
  local_root = tmp_path / "checkpoints"
  args = ["run", f"--gin_file={config}", f"--output_dir={out}"]
  assert gbair(*args) == 2  # Orbax cannot write there and no local folder was given
  assert "checkpoint_location.local_root" in capsys.readouterr().err
  assert not gfile.exists(out)
  args.append(f"--gin.checkpoint_location.local_root='{local_root}'")

  append_round = ledger_lib.append_round

  def killed_after_append(path, round_index, entries):
    append_round(path, round_index, entries)
    if round_index == 0:
      raise KeyboardInterrupt("killed between the ledger append and round.json")

  monkeypatch.setattr(ledger_lib, "append_round", killed_after_append)
  with pytest.raises(KeyboardInterrupt):
    main.main(args)
  gin.clear_config()
  monkeypatch.undo()
  assert not gfile.exists(f"{out}/round_0/round.json")
  assert gbair(*args) == 0
  assert "cannot be locked" in capsys.readouterr().err  # the documented warning

  def ram_text(name):
    with gfile.GFile(f"{out}/{name}") as f:
      return f.read()

  assert ram_text("ledger.jsonl") == read(os.path.join(finished, "ledger.jsonl"))
  report = json.loads(ram_text("report.json"))
  assert [{k: v for k, v in r.items() if k != "seconds"} for r in report["rounds"]] == (
      rounds_of(finished))
  for name in ("config.gin", "data_fingerprint.json", "report.md", "test_metrics.png",
               "detection.png", "round_0/metrics.json", "round_0/round.json",
               "round_0/suspects.jsonl", "round_1/round.json"):
    assert gfile.exists(f"{out}/{name}"), name
  local_files = [os.path.join(d, f) for d, _, fs in os.walk(local_root) for f in fs]
  assert local_files and all("/checkpoints/" in path for path in local_files)
  assert not any(".tmp" in name for _, _, names in gfile.walk(out) for name in names)

  capsys.readouterr()
  code = gbair("influence", f"--output_dir={out}", "--round=0", "--queries=validation",
               "--top_k=2")
  assert code == 0, capsys.readouterr().err
  assert gfile.exists(f"{out}/round_0/influence/validation_top2.jsonl")
  gfile.rmtree(out.rsplit("/", 1)[0])
