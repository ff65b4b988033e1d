"""Every run file goes through here: local paths with `os`, other URIs (gs://, ram://, ...)
with `tf.io.gfile`, so `--output_dir=gs://bucket/run` works on TPU VMs.

Writes replace whole files: a local file via a temp file and `os.replace` (atomic); an
object store has no atomic rename, but it writes each object whole, so the object is
written once, in one piece. A reader never sees half a file either way.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import shutil
import socket
import sys
import tempfile
from typing import Any, Iterator

from gbair_jax.errors import UserError

LOCK_FILE = ".gbair.lock"


def is_local(path: str) -> bool:
  """Whether `path` is on the local filesystem (no URI scheme, or file://)."""
  path = os.fspath(path)
  return "://" not in path or path.startswith("file://")


def _local(path: str) -> str:
  path = os.fspath(path)
  return path[len("file://"):] if path.startswith("file://") else path


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only for URIs)
  return tf.io.gfile


def join(path: str, *parts: str) -> str:
  """`os.path.join` for local paths; '/'-joined for URIs (gs://b/run + round_0)."""
  path = os.fspath(path)
  if is_local(path):
    return os.path.join(path, *parts)
  for part in parts:
    path = path.rstrip("/") + "/" + part.lstrip("/")
  return path


def dirname(path: str) -> str:
  path = os.fspath(path)
  if is_local(path):
    return os.path.dirname(os.path.abspath(_local(path)))
  return path.rstrip("/").rsplit("/", 1)[0]


def basename(path: str) -> str:
  return os.path.basename(os.fspath(path).rstrip("/"))


def for_orbax(path: str) -> str:
  """The path Orbax is given: absolute if local (Orbax wants that), else the URI as is."""
  return os.path.abspath(_local(path)) if is_local(path) else os.fspath(path)


def exists(path: str) -> bool:
  return os.path.exists(_local(path)) if is_local(path) else _gfile().exists(path)


def isdir(path: str) -> bool:
  return os.path.isdir(_local(path)) if is_local(path) else _gfile().isdir(path)


def isfile(path: str) -> bool:
  if is_local(path):
    return os.path.isfile(_local(path))
  return _gfile().exists(path) and not _gfile().isdir(path)


def listdir(path: str) -> list[str]:
  names = os.listdir(_local(path)) if is_local(path) else _gfile().listdir(path)
  return sorted(name.rstrip("/") for name in names)


def makedirs(path: str) -> None:
  if is_local(path):
    os.makedirs(_local(path), exist_ok=True)
  else:
    _gfile().makedirs(path)


def remove(path: str) -> None:
  """Removes a file; a missing one is not an error."""
  if not exists(path):
    return
  if is_local(path):
    os.remove(_local(path))
  else:
    _gfile().remove(path)


def rmtree(path: str) -> None:
  """Removes a folder and everything in it; a missing one is not an error."""
  if not exists(path):
    return
  if is_local(path):
    shutil.rmtree(_local(path))
  else:
    _gfile().rmtree(path)


def copytree(source: str, target: str) -> None:
  """Copies a folder (any filesystem to any filesystem), file by file."""
  makedirs(target)
  for name in listdir(source):
    if isdir(join(source, name)):
      copytree(join(source, name), join(target, name))
    else:
      write_bytes(join(target, name), read_bytes(join(source, name)))


def stat_key(path: str) -> tuple[int, int]:
  """(size, modification time in ns): a cache key that changes when the file does."""
  if is_local(path):
    stat = os.stat(_local(path))
    return stat.st_size, stat.st_mtime_ns
  stat = _gfile().stat(path)
  return stat.length, stat.mtime_nsec


def read_bytes(path: str) -> bytes:
  if is_local(path):
    with open(_local(path), "rb") as f:
      return f.read()
  with _gfile().GFile(path, "rb") as f:
    return f.read()


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def read_json(path: str) -> Any:
  return json.loads(read_text(path))


def write_bytes(path: str, data: bytes) -> None:
  """Writes the whole file at once: a reader sees the old content or the new, never half."""
  if not is_local(path):
    with _gfile().GFile(path, "wb") as f:  # one object, uploaded whole on close
      f.write(data)
    return
  path = _local(path)
  directory = os.path.dirname(os.path.abspath(path))
  fd, temp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temp_path, path)
  except BaseException:
    if os.path.exists(temp_path):
      os.remove(temp_path)
    raise
  _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
  """Makes a rename durable (a crash right after it keeps the new file)."""
  try:
    dir_fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(dir_fd)
  except OSError:
    pass
  finally:
    os.close(dir_fd)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def finite_json(value: Any) -> Any:
  """`value` with every NaN or infinity replaced by None (JSON null), and numpy scalars
  as Python numbers: strict JSON parsers reject the bare NaN `json.dumps` writes."""
  if isinstance(value, dict):
    return {k: finite_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [finite_json(v) for v in value]
  if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def dumps_json(obj: Any, indent: int | None = 2) -> str:
  """Strict JSON: non-finite numbers become null (see `finite_json`)."""
  return json.dumps(finite_json(obj), indent=indent, allow_nan=False)


def write_json(path: str, obj: Any) -> None:
  write_text(path, dumps_json(obj))


def save_figure(fig, path: str) -> str:
  """A matplotlib figure as a PNG at `path`, written whole."""
  import io  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  write_bytes(path, buffer.getvalue())
  return path


def tensorboard_writer(logdir: str):
  """clu's default writer (log lines + TF summaries in `logdir`), built without epath so
  that any filesystem TensorFlow writes (gs://, ram://) works."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top  (heavy)
  return metric_writers.MultiWriter([metric_writers.LoggingWriter(),
                                     metric_writers.SummaryWriter(os.fspath(logdir))])


def make_output_dir(output_dir: str) -> None:
  """Creates `output_dir` (and its parents), or says in one line why it cannot."""
  if is_local(output_dir):
    local = _local(output_dir)
    if os.path.exists(local) and not os.path.isdir(local):
      raise UserError(f"--output_dir={output_dir}: exists and is not a directory")
    try:
      os.makedirs(local, exist_ok=True)
    except OSError as e:
      raise UserError(f"--output_dir={output_dir}: cannot create it "
                      f"({e.strerror or type(e).__name__}: {e.filename or local})") from None
    if not os.access(local, os.W_OK | os.X_OK):
      raise UserError(f"--output_dir={output_dir}: not writable")
    return
  try:
    if exists(output_dir) and not isdir(output_dir):
      raise UserError(f"--output_dir={output_dir}: exists and is not a directory")
    makedirs(output_dir)
  except UserError:
    raise
  except Exception as e:  # gfile raises tf.errors.* (permission, bucket not found, ...)
    raise UserError(f"--output_dir={output_dir}: cannot create it ({_first_line(e)})") from None


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0] if text else type(error).__name__


class RunLock:
  """An advisory lock on `<output_dir>/.gbair.lock`, held until `release` (or exit).

  `fcntl.flock` on a local file: the kernel drops it when the process dies, even by
  kill -9, so a crash never leaves a stale lock. Object stores (gs://) have no such
  lock: there `acquire` prints a warning and holds nothing.
  """

  def __init__(self, output_dir: str):
    self.output_dir = output_dir
    self._fd: int | None = None

  def check_free(self) -> None:
    """Refuses at once when another process holds the lock (before a command spends
    minutes loading data only to be refused at `acquire`); creates nothing."""
    if not is_local(self.output_dir):
      return
    path = os.path.join(_local(self.output_dir), LOCK_FILE)
    try:
      fd = os.open(path, os.O_RDWR)
    except OSError:
      return  # no lock file yet (or no directory): nobody holds it
    try:
      self._flock(fd)
    finally:
      os.close(fd)

  def _flock(self, fd: int) -> None:
    import fcntl  # pylint: disable=g-import-not-at-top  (POSIX only)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
      raise UserError(f"--output_dir={self.output_dir} is in use by {holder}; wait for it "
                      "to end or use another --output_dir (nothing was changed)") from None

  def acquire(self) -> "RunLock":
    if not is_local(self.output_dir):
      print(f"gbair: warning: {self.output_dir} is not on a local filesystem, so it cannot "
            "be locked: make sure no other gbair process writes to it", file=sys.stderr)
      return self
    path = os.path.join(_local(self.output_dir), LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      self._flock(fd)
    except BaseException:
      os.close(fd)
      raise
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    holder = (f"process {os.getpid()} on {socket.gethostname()} (started {started}: "
              f"{' '.join(['gbair', *sys.argv[1:]])[:300]})")
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.encode("utf-8"), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing the descriptor drops the flock
      self._fd = None

  def __enter__(self) -> "RunLock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()


@contextlib.contextmanager
def locked(output_dir: str) -> Iterator[RunLock]:
  """`with locked(d):` holds d's run lock for the block (see `RunLock`)."""
  lock = RunLock(output_dir).acquire()
  try:
    yield lock
  finally:
    lock.release()
