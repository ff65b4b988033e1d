"""The run-file module: local writes are atomic renames, object-store writes are whole
objects (no rename needed), and the same calls work on TensorFlow's ram:// filesystem."""
import os

import pytest

from gbair_jax.errors import UserError
from gbair_jax.runtime import files


@pytest.fixture
def ram_dir():
  import tensorflow as tf
  root = f"ram://files_test_{os.getpid()}"
  yield f"{root}/run"
  if tf.io.gfile.exists(root):
    tf.io.gfile.rmtree(root)


def test_local_write_is_atomic_and_leaves_no_temp_file(tmp_path, monkeypatch):
  path = str(tmp_path / "a.json")
  files.write_json(path, {"x": 1})
  assert files.read_json(path) == {"x": 1}

  def killed(*args):
    raise KeyboardInterrupt("killed between write and rename")

  monkeypatch.setattr(os, "replace", killed)
  with pytest.raises(KeyboardInterrupt):
    files.write_json(path, {"x": 2})
  assert files.read_json(path) == {"x": 1}
  assert os.listdir(tmp_path) == ["a.json"]


def test_object_store_write_needs_no_rename(ram_dir, monkeypatch):
  import tensorflow as tf

  def no_rename(*args, **kwargs):
    raise AssertionError("object stores have no atomic rename: write the object whole")

  monkeypatch.setattr(tf.io.gfile, "rename", no_rename)
  files.makedirs(files.join(ram_dir, "round_0"))
  files.write_text(files.join(ram_dir, "round_0", "round.json"), '{"round": 0}')
  files.write_bytes(files.join(ram_dir, "ledger.jsonl"), b"line\n")
  assert files.read_json(files.join(ram_dir, "round_0", "round.json")) == {"round": 0}
  assert files.listdir(ram_dir) == ["ledger.jsonl", "round_0"]
  assert files.isdir(files.join(ram_dir, "round_0"))
  assert files.isfile(files.join(ram_dir, "ledger.jsonl"))
  assert not files.is_local(ram_dir) and files.is_local("/tmp/x") and files.is_local("rel/x")
  files.copytree(files.join(ram_dir, "round_0"), files.join(ram_dir, "copy"))
  assert files.read_text(files.join(ram_dir, "copy", "round.json")) == '{"round": 0}'
  files.rmtree(files.join(ram_dir, "copy"))
  assert not files.exists(files.join(ram_dir, "copy"))


def test_json_is_strict():
  text = files.dumps_json({"a": float("nan"), "b": [float("inf"), 1.5], "c": None})
  assert "NaN" not in text and "Infinity" not in text
  import json
  assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": None}


def test_lock_on_an_object_store_warns_and_holds_nothing(ram_dir, capsys):
  files.make_output_dir(ram_dir)
  with files.locked(ram_dir):
    with files.locked(ram_dir):  # no lock to conflict with there
      pass
  assert "cannot be locked" in capsys.readouterr().err


def test_output_dir_problems_are_user_errors(tmp_path):
  (tmp_path / "f").write_text("x")
  with pytest.raises(UserError, match="not a directory"):
    files.make_output_dir(str(tmp_path / "f"))
  with pytest.raises(UserError, match="cannot create"):
    files.make_output_dir(str(tmp_path / "f" / "run"))


def test_json_keeps_numpy_scalar_types():
  import json
  import numpy as np
  text = files.dumps_json({"i": np.int64(5), "f": np.float32(0.5), "n": np.float64("nan"),
                           "b": np.bool_(True)})
  assert json.loads(text) == {"i": 5, "f": 0.5, "n": None, "b": True}
  assert '"i": 5,' in text
