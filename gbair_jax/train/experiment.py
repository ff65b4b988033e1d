"""Everything a run needs, built from gin: data (tokenised by the SeqIO task), classifier,
frozen weights, and the one device mesh that training, evaluation and TracIn share (the
composition root).

Also guards an output directory: it is locked while a command writes it, a run's gin
config and data fingerprint are written once, and a different config or data is refused.
"""
from __future__ import annotations

import dataclasses

import gin
import numpy as np
from jax.sharding import Mesh

from gbair_jax import config as config_lib
from gbair_jax.data.dataset import LabeledData, load_data
from gbair_jax.errors import UserError
from gbair_jax.models.backbone import Params
from gbair_jax.models.classifier import ClassifierSpec, build_classifier
from gbair_jax.runtime import files
from gbair_jax.runtime import mesh as mesh_lib
from gbair_jax.runtime import process


@dataclasses.dataclass
class Experiment:
  data: LabeledData
  spec: ClassifierSpec
  frozen: Params  # on `mesh`: replicated, or partitioned (build_experiment.partition_frozen)
  sequence_length: int
  # ('data', 'model'): batches over data, frozen weights over model when asked; None: one
  # device (an Experiment put together by hand, e.g. in a notebook).
  mesh: Mesh | None = None
  # tokenized_splits' result for hand-built data: tokenising through SeqIO traces a
  # tf.data pipeline (0.6 s for three small splits, 2 s the first time), and every run on
  # this Experiment asks again.
  _tokenized: dict | None = dataclasses.field(default=None, init=False, repr=False,
                                              compare=False)

  def __post_init__(self):
    if self.mesh is None:
      self.mesh = mesh_lib.single_device_mesh()

  def runtime(self) -> dict:
    """What ran: {"mesh": {"data": D, "model": M}, "device_kind": ..., "num_processes": ...}."""
    return mesh_lib.describe(self.mesh)

  def tokenized_splits(self) -> dict[str, dict[str, np.ndarray]]:
    """The splits with `tokens` and `mask` [N, sequence_length]: as `load_data` read them
    from the SeqIO task, or, for data put together by hand (text only), through the same
    SeqIO preprocessors with the backbone's feature. Tokenised once per Experiment; each
    call returns new dicts (callers add splits and columns), sharing the arrays, which no
    caller writes (ledger changes make new columns)."""
    from gbair_jax.data import features  # pylint: disable=g-import-not-at-top
    if self._tokenized is None:
      feature = self.spec.backbone.inputs_feature
      out = {}
      for name, split in self.data.splits.items():
        if "tokens" in split:
          if split["tokens"].shape[1] != self.sequence_length:
            raise UserError(f"split {name!r} was tokenized to {split['tokens'].shape[1]} "
                            f"tokens, not sequence_length = {self.sequence_length}")
          out[name] = split
        else:
          out[name] = features.tokenize_columns(split, feature, self.sequence_length)
      self._tokenized = out
    return {name: dict(split) for name, split in self._tokenized.items()}


@gin.configurable
def build_experiment(sequence_length: int = 64, partition_frozen: bool = False) -> Experiment:
  """Loads the gin-configured task and backbone. `sequence_length` counts text tokens
  (special tokens included), not the prompt.

  The mesh is built here, once, from `partitioning.make_mesh` (default: every device,
  all of them on `data`). Frozen weights are replicated on it, or with
  `partition_frozen=True` split over its `model` axis by the T5X-style rules of
  runtime/mesh.py, for backbones too large for one device (T5 XL / XXL); jit then runs the
  model with GSPMD.
  """
  if sequence_length < 4:
    raise UserError(f"build_experiment.sequence_length must be >= 4, got {sequence_length}")
  data = load_data(sequence_length=sequence_length)
  spec = build_classifier(label_names=data.label_names)
  check_inputs_feature(data, spec.backbone)
  mesh = mesh_lib.make_mesh()
  frozen = spec.backbone.load_params()
  try:
    frozen = mesh_lib.place_frozen(frozen, mesh, partition=partition_frozen)
  except ValueError as e:
    raise UserError(f"build_experiment.partition_frozen: {e}") from e
  return Experiment(data=data, spec=spec, frozen=frozen, sequence_length=sequence_length,
                    mesh=mesh)


def check_inputs_feature(data: LabeledData, backbone) -> None:
  """The task tokenized with the classifier's vocabulary and special tokens (T5X checks its
  model's vocabularies against the task's the same way)."""
  if data.inputs_feature != backbone.inputs_feature:
    describe = lambda f: (f"{f.vocabulary!r} (add_bos={f.add_bos}, add_eos={f.add_eos})"
                          if f is not None else "nothing")
    raise UserError(
        f"task {data.task!r} tokenizes with {describe(data.inputs_feature)}, but the "
        f"classifier's backbone {backbone.name!r} reads {describe(backbone.inputs_feature)}: bind "
        "inputs_feature.backbone and build_classifier.backbone to the same backbone "
        "(gin/models/*.gin: both = %BACKBONE)")


CONFIG_FILE = "config.gin"
FINGERPRINT_FILE = "data_fingerprint.json"


def claim_output_dir(output_dir: str, config: str, data: LabeledData | None = None
                     ) -> files.RunLock:
  """Locks output_dir and records `config` (and the data's fingerprint) there, or checks
  they equal the ones recorded. Call it once the data and settings are validated: a
  refused or failed command leaves output_dir as it was.

  Returns:
    The held run lock: release it (or use it in a `with`) when the command ends.

  Raises:
    UserError: output_dir cannot be created, another process holds it, or it holds a
      run with a different config or different data (nothing is changed then).
  """
  from gbair_jax.data import fingerprint as fingerprint_lib  # pylint: disable=g-import-not-at-top
  fingerprint = None if data is None else fingerprint_lib.data_fingerprint(data)
  _check_recorded(output_dir, config, fingerprint)  # before creating anything
  files.make_output_dir(output_dir)
  primary = process.is_primary()
  # Process 0 holds the lock for all processes of one run (they share output_dir).
  lock = files.RunLock(output_dir).acquire() if primary else files.RunLock(output_dir)
  try:
    _check_recorded(output_dir, config, fingerprint)  # again, now that we hold the lock
    config_path = files.join(output_dir, CONFIG_FILE)
    fingerprint_path = files.join(output_dir, FINGERPRINT_FILE)
    if primary and fingerprint is not None and not files.exists(fingerprint_path):
      files.write_json(fingerprint_path, fingerprint)
    if primary and not files.exists(config_path):
      files.write_text(config_path, config)
  except BaseException:
    lock.release()
    raise
  return lock


def check_output_dir_free(output_dir: str) -> None:
  """Refuses at once an output_dir another process writes (see `files.RunLock`)."""
  if process.is_primary():  # the other processes of this run share process 0's lock
    files.RunLock(output_dir).check_free()


def recorded_fingerprint(output_dir: str) -> dict | None:
  path = files.join(output_dir, FINGERPRINT_FILE)
  return files.read_json(path) if files.exists(path) else None


def check_data(output_dir: str, data: LabeledData) -> None:
  """Refuses `data` unless they are the data the run in output_dir was started with."""
  from gbair_jax.data import fingerprint as fingerprint_lib  # pylint: disable=g-import-not-at-top
  _check_recorded(output_dir, None, fingerprint_lib.data_fingerprint(data))


def _check_recorded(output_dir: str, config: str | None, fingerprint: dict | None) -> None:
  config_path = files.join(output_dir, CONFIG_FILE)
  # A benchmark or compare rerun may list more strategies or seeds: those lists are left out.
  if config is not None and files.exists(config_path) and not config_lib.same_recorded_config(
      files.read_text(config_path), config):
    raise UserError(f"{config_path}: this output_dir holds a run with a different gin config; "
                    "use a new --output_dir (nothing was changed)")
  recorded = recorded_fingerprint(output_dir) if fingerprint is not None else None
  if recorded is not None and recorded.get("sha256") != fingerprint["sha256"]:
    from gbair_jax.data import fingerprint as fingerprint_lib  # pylint: disable=g-import-not-at-top
    raise UserError(
        f"{files.join(output_dir, FINGERPRINT_FILE)}: the data differ from those this run "
        f"started with ({fingerprint_lib.describe_difference(recorded, fingerprint)}): a "
        "source file changed? Use a new --output_dir (nothing was changed)")
