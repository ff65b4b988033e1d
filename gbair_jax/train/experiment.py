"""Everything a run needs, built from gin: data, classifier, frozen weights, tokenised splits,
and the one device mesh that training, evaluation and TracIn share (the composition root).

Also guards an output directory: a run's gin config is written once to
`<output_dir>/config.gin`, and a different config in the same directory is refused.
"""
from __future__ import annotations

import dataclasses
import os

import gin
import numpy as np
from jax.sharding import Mesh

from gbair_jax.data.dataset import LabeledData, load_data
from gbair_jax.errors import UserError
from gbair_jax.models.backbone import Params
from gbair_jax.models.classifier import ClassifierSpec, build_classifier
from gbair_jax.runtime import mesh as mesh_lib
from gbair_jax.runtime import process
from gbair_jax.train import batches as batches_lib


@dataclasses.dataclass
class Experiment:
  data: LabeledData
  spec: ClassifierSpec
  frozen: Params  # on `mesh`: replicated, or partitioned (build_experiment.partition_frozen)
  sequence_length: int
  # ('data', 'model'): batches over data, frozen weights over model when asked; None: one
  # device (an Experiment put together by hand, e.g. in a notebook).
  mesh: Mesh | None = None

  def __post_init__(self):
    if self.mesh is None:
      self.mesh = mesh_lib.single_device_mesh()

  def runtime(self) -> dict:
    """What ran: {"mesh": {"data": D, "model": M}, "device_kind": ..., "num_processes": ...}."""
    return mesh_lib.describe(self.mesh)

  def tokenize(self, split: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return batches_lib.tokenize_split(split, self.spec.backbone, self.sequence_length)

  def tokenized_splits(self) -> dict[str, dict[str, np.ndarray]]:
    return {name: self.tokenize(split) for name, split in self.data.splits.items()}


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
  data = load_data()
  spec = build_classifier(label_names=data.label_names)
  mesh = mesh_lib.make_mesh()
  frozen = spec.backbone.load_params()
  try:
    frozen = mesh_lib.place_frozen(frozen, mesh, partition=partition_frozen)
  except ValueError as e:
    raise UserError(f"build_experiment.partition_frozen: {e}") from e
  return Experiment(data=data, spec=spec, frozen=frozen, sequence_length=sequence_length,
                    mesh=mesh)


CONFIG_FILE = "config.gin"


def claim_output_dir(output_dir: str, config: str) -> None:
  """Records `config` in output_dir, or checks it equals the one recorded there."""
  os.makedirs(output_dir, exist_ok=True)
  path = os.path.join(output_dir, CONFIG_FILE)
  if os.path.exists(path):
    with open(path) as f:
      if f.read() != config:
        raise UserError(f"{path}: this output_dir holds a run with a different gin config; "
                        "use a new --output_dir (nothing was changed)")
    return
  if not process.is_primary():
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(config)
  os.replace(tmp, path)
