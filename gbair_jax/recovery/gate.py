"""Gated rounds: a recovery round's changes are kept only if they do not make the model worse.

With `run.gate = True`, a seeded, class-stratified slice of the validation split (the
gate) is held out before anything else sees validation: strategies, thresholds and
validation metrics use the rest. After round r trains on round r - 1's changes, its gate
metric is compared with that of the last accepted model. If it fell by more than
`gate.tolerance` (plus `gate.noise_z` standard errors of the difference, when set: see
`difference_noise`), round r is rejected: round r - 1's changes are undone by ledger lines
(strategy GATE_ROLLBACK): a relabel by the reverse relabel, a removal by a line that puts
the example back with the label it was removed with. The budget is halved, and a new,
smaller selection is taken from the accepted model's saved scores (those examples' labels
are the accepted ones again, so the scores still apply). The run's result is the last
accepted round (`report["final_round"]`), never a rejected one, so a run never ends below
round 0 on the gate.
"""
from __future__ import annotations

import dataclasses

import gin
import numpy as np

from gbair_jax.data import ledger as ledger_lib
from gbair_jax.data.ledger import LedgerEntry
from gbair_jax.errors import UserError
from gbair_jax.train.metrics import classification_metrics

GATE_ROLLBACK = ledger_lib.ROLLBACK  # the only lines that may restore a removed example


@gin.configurable
@dataclasses.dataclass(frozen=True)
class GateConfig:
  """Gin `GateConfig.*`.

  Attributes:
    fraction: share of the validation split held out as the gate (stratified by class).
    metric: the gate's metric, a key of train.metrics.classification_metrics ("auc").
    tolerance: a round is rejected when the gate metric falls by more than this.
    noise_z: ... plus this many standard errors of the difference between the two models
      on the gate slice (`difference_noise`); 0 compares the bare values.
    resamples: bootstrap resamples of the gate slice behind that standard error.
    seed: which examples form the gate (and how they are resampled).
  """

  fraction: float = 0.3
  metric: str = "auc"
  tolerance: float = 0.0
  noise_z: float = 0.0
  resamples: int = 200
  seed: int = 0

  def check(self) -> None:
    if not 0 < self.fraction < 1:
      raise UserError(f"GateConfig.fraction={self.fraction} must be in (0, 1)")
    if self.tolerance < 0:
      raise UserError(f"GateConfig.tolerance={self.tolerance} must be >= 0")
    if self.noise_z < 0:
      raise UserError(f"GateConfig.noise_z={self.noise_z} must be >= 0")
    if isinstance(self.resamples, bool) or not isinstance(self.resamples, int) or self.resamples < 10:
      raise UserError(f"GateConfig.resamples={self.resamples!r} must be an integer >= 10")
    if self.metric not in ("auc", "accuracy", "f1"):
      raise UserError(f"GateConfig.metric={self.metric!r}: expected auc, accuracy or f1")


def split_gate(validation: dict[str, np.ndarray], config: GateConfig
               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """(validation without the gate, the gate): `config.fraction` of each class, seeded."""
  labels = np.asarray(validation["label"])
  rng = np.random.default_rng(config.seed)
  is_gate = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    rows = np.flatnonzero(labels == c)
    take = int(round(config.fraction * len(rows)))
    is_gate[rng.choice(rows, size=take, replace=False)] = True
  if is_gate.all() or not is_gate.any():
    raise UserError(f"GateConfig.fraction={config.fraction}: a validation split of "
                    f"{len(labels)} examples leaves no gate or nothing else")
  rest = {k: v[~is_gate] for k, v in validation.items()}
  gate = {k: v[is_gate] for k, v in validation.items()}
  return rest, gate


def gate_value(logits: np.ndarray, gate: dict[str, np.ndarray], config: GateConfig) -> float:
  """The gate metric of a model's logits on the gate slice."""
  return float(classification_metrics(logits, gate["label"])[config.metric])


def difference_noise(logits: np.ndarray, accepted_logits: np.ndarray,
                     gate: dict[str, np.ndarray], config: GateConfig) -> float:
  """Standard error of gate_value(logits) - gate_value(accepted_logits): both models scored
  on the same bootstrap resamples of the gate slice (paired, so what they share cancels;
  each class resampled within itself, so every resample has every class), seeded."""
  labels = np.asarray(gate["label"])
  by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
  rng = np.random.default_rng([config.seed, 1])
  differences = []
  for _ in range(config.resamples):
    rows = np.concatenate([rng.choice(members, size=len(members)) for members in by_class])
    resample = {"label": labels[rows]}
    differences.append(gate_value(logits[rows], resample, config)
                       - gate_value(accepted_logits[rows], resample, config))
  return float(np.std(differences, ddof=1))


def rejects(value: float, accepted_value: float, config: GateConfig, noise: float = 0.0) -> bool:
  """True when `value` fell below the accepted model's by more than the tolerance plus
  `config.noise_z` x `noise` (the difference's standard error)."""
  return value < accepted_value - config.tolerance - config.noise_z * noise


def rollback_entries(changes: list[LedgerEntry], round_index: int) -> list[LedgerEntry]:
  """Ledger lines of round `round_index` that undo `changes`: a relabel goes back to its old
  label; a removed example comes back with the label it had (old_label == new_label)."""
  return [LedgerEntry(round=round_index, example_id=entry.example_id,
                      old_label=entry.old_label if entry.new_label is None else entry.new_label,
                      new_label=entry.old_label, score=None, strategy=GATE_ROLLBACK)
          for entry in changes]


def is_rollback(entry: LedgerEntry) -> bool:
  return entry.strategy == GATE_ROLLBACK
