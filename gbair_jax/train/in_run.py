"""In-run TracIn: influence accumulated by the training step itself, plus free training dynamics.

`tracin.source = "in_run"`: the query set's gradients are taken at the prompt each epoch
starts from (the pass doubles as the previous epoch's validation evaluation); every training
step then takes per-example gradients from its one backward pass (their mean is the update)
and adds lr_t <g_t(z), g(q)> into per-example accumulators. What is kept:
  self_influence  [N]     sum_t lr_t |g_t(z)|^2
  mean_influence  [N]     sum_t lr_t <g_t(z), mean_q g(q)> (= mean TracIn over the queries)
  class_influence [N, C]  sum_t lr_t <g_t(z), sum_{q of class c} g(q)>
  top-k opponents / proponents per query and epoch [E, M, k] (`tracin.top_k`, 0 = off)
  dynamics        [E, N]  loss, margin (label logit - largest other) and p(label) at the
                          step that trained on z, the numbers AUM and data cartography use.
Which steps count against the queries (`tracin.first_query_epoch`, default 2): epoch e's
steps against the queries at the prompt epoch e - 1 ended at, for e >= 2, i.e. query
snapshots at the epoch checkpoints, as TracInCP reads them, and no extra pass at the
initial prompt (1 adds epoch 1 against the initial prompt, for one more query pass).
`tracin.query_every_steps` = K > 0 refreshes the query gradients every K steps within an
epoch; K = 1 is per-step TracIn (Pruthi et al.'s ideal, one query pass per step), the
yardstick benchmarks/inrun_overhead.py --ideal measures both modes against.
Nothing of size [N, M] or [N, d] is stored. Per-query top-k of the *summed* score, and
sums of min(score, 0), are not accumulable this way: strategies needing them score from
the checkpoints. `"checkpoints"` (default) is exact TracInCP over the epoch checkpoints.
Accumulators are plain jitted jnp scatters by training-set position, so a batch sharded
over a mesh needs no change here; the query pass splits its batches over the mesh too.
"""
from __future__ import annotations

import dataclasses
import io

import gin
import jax
import jax.numpy as jnp
import numpy as np

from gbair_jax.errors import UserError
from gbair_jax.models.classifier import ClassifierSpec
from gbair_jax.runtime import files
from gbair_jax.runtime import mesh as mesh_lib
from gbair_jax.train import batches as batches_lib
from gbair_jax.train import per_example_grads as grads_lib

SOURCES = ("checkpoints", "in_run")
POSITION_KEY = "position"  # the training-set row of each batch row (scatter target)
DIRECTORY = "in_run"  # <round_dir>/in_run/epoch_<e>.npz, beside checkpoints/<e>
DYNAMICS = ("loss", "margin", "p_label")


@gin.configurable("tracin")
def tracin_settings(source: str = "checkpoints", top_k: int = 0, first_query_epoch: int = 2,
                    query_every_steps: int = 0) -> dict:
  """Where TracIn scores come from: "checkpoints" (TracInCP, the reference) or "in_run".

  In-run only (see the module docstring):
    top_k: the opponents and proponents kept per query and epoch (0: none; no strategy
      reads them yet, and keeping them holds every query's gradient [M, d] on the devices).
    first_query_epoch: the first epoch whose steps count against the queries.
    query_every_steps: refresh the query gradients every this many steps (0: once per epoch).
  """
  if source not in SOURCES:
    raise UserError(f"tracin.source='{source}' is unknown (expected one of {', '.join(SOURCES)})")
  for name, value, least in (("top_k", top_k, 0), ("first_query_epoch", first_query_epoch, 1),
                             ("query_every_steps", query_every_steps, 0)):
    if value < least:
      raise UserError(f"tracin.{name} must be >= {least}, got {value}")
  return {"source": source, "top_k": top_k, "first_query_epoch": first_query_epoch,
          "query_every_steps": query_every_steps}


@dataclasses.dataclass
class TrainingDynamics:
  """Per epoch and training example, in training-set order: [epochs, N] each."""

  loss: np.ndarray
  margin: np.ndarray
  p_label: np.ndarray


@dataclasses.dataclass
class InRunResult:
  """Host arrays in training-set order (row n = train split row n)."""

  self_influence: np.ndarray  # [N]
  mean_influence: np.ndarray | None  # [N]; None without queries
  class_influence: np.ndarray | None  # [N, C]
  query_ids: np.ndarray | None  # [M] int64
  # Per epoch e and query m, the k training rows (positions) with the most negative
  # (opponents, ascending) / positive (proponents, descending) influence within epoch e.
  opponent_positions: np.ndarray | None  # [E, M, k] int32, -1 where fewer than k
  opponent_scores: np.ndarray | None  # [E, M, k]
  proponent_positions: np.ndarray | None
  proponent_scores: np.ndarray | None
  dynamics: TrainingDynamics


def example_outputs(spec: ClassifierSpec):
  """`(prompt, frozen, batch, per_example_prompt) -> (losses [B], logits [B, C])`."""
  def outputs(prompt, frozen, batch, per_example_prompt):
    logits = spec.logits(prompt, frozen, batch["tokens"], batch["mask"], per_example_prompt)
    logits = logits.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    label = batch["label"][:, None].astype(jnp.int32)
    return -jnp.take_along_axis(log_probs, label, axis=-1)[:, 0], logits
  return outputs


def _margin_and_p_label(logits: jax.Array, label: jax.Array) -> tuple[jax.Array, jax.Array]:
  label = label[:, None].astype(jnp.int32)
  assigned = jnp.take_along_axis(logits, label, axis=-1)[:, 0]
  is_label = jnp.arange(logits.shape[-1])[None, :] == label
  largest_other = jnp.max(jnp.where(is_label, -jnp.inf, logits), axis=-1)
  p_label = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), label, axis=-1)[:, 0]
  return assigned - largest_other, p_label


def _merge_top_k(best_scores, best_positions, scores, positions, valid, largest: bool):
  """Running top-k per query ([M, k]) over the kept k and this batch's rows ([B, M])."""
  sentinel = -jnp.inf if largest else jnp.inf
  candidates = jnp.where(valid[None, :], scores.T, sentinel)
  all_scores = jnp.concatenate([best_scores, candidates], axis=1)
  all_positions = jnp.concatenate(
      [best_positions, jnp.broadcast_to(positions[None, :], candidates.shape)], axis=1)
  _, index = jax.lax.top_k(all_scores if largest else -all_scores, best_scores.shape[1])
  return (jnp.take_along_axis(all_scores, index, axis=1),
          jnp.take_along_axis(all_positions, index, axis=1))


class InRunTracIn:
  """The trainer's in-run hook: query pass, per-step accumulation, save / restore, result.

  Args:
    spec: the classifier being trained.
    queries: tokenised query split (with `label`, `example_id`), or None for
      self-influence and dynamics only (no query pass at all).
    top_k: opponents / proponents kept per query and epoch (0: none, and no [M, d] kept).
    batch_size: the query pass's batch size.
    first_query_epoch, query_every_steps: which steps count against the queries, and how
      often the query gradients are refreshed (`tracin_settings`).
  The trainer calls `setup(num_train, num_epochs)` before it accumulates.
  """

  def __init__(self, spec: ClassifierSpec, queries: dict[str, np.ndarray] | None = None,
               top_k: int = 0, batch_size: int = 64, first_query_epoch: int = 2,
               query_every_steps: int = 0):
    self.spec = spec
    self.queries = queries
    self.num_classes = len(spec.label_names)
    self.requested_top_k = top_k if queries is not None else 0
    self.batch_size = batch_size
    self.first_query_epoch = first_query_epoch
    self.query_every_steps = query_every_steps
    self.num_train = self.num_epochs = self.top_k = None
    self._outputs = example_outputs(spec)
    self._query_batch = {}  # mesh -> the jitted query batch, outputs replicated on it

  def setup(self, num_train: int, num_epochs: int) -> "InRunTracIn":
    """Sizes the accumulators for a training set of `num_train` rows and `num_epochs`."""
    if self.queries is not None and self.first_query_epoch > num_epochs:
      raise UserError(f"tracin.first_query_epoch={self.first_query_epoch} but training runs "
                      f"{num_epochs} epoch(s): no step would count against the queries (bind "
                      "tracin.first_query_epoch=1 or train more epochs)")
    self.num_train, self.num_epochs = num_train, num_epochs
    self.top_k = min(self.requested_top_k, num_train)
    return self

  def counts_queries(self, epoch: int) -> bool:
    """Whether epoch `epoch`'s steps (1-based) accumulate influence on the queries."""
    return self.queries is not None and epoch >= self.first_query_epoch

  def refreshes_queries(self, epoch: int, step_in_epoch: int) -> bool:
    """Whether the query gradients are taken again before this step (0-based in the epoch;
    step 0 uses the pass at the epoch's starting prompt)."""
    every = self.query_every_steps
    return (self.counts_queries(epoch) and every > 0 and step_in_epoch > 0
            and step_in_epoch % every == 0)

  # ---- the query pass (at the start of each epoch) ----

  def _query_batch_unjitted(self, prompt, frozen, batch):
    grads, _, logits = grads_lib.per_example_grads_with_aux(self._outputs, prompt, frozen, batch)
    one_hot = jax.nn.one_hot(batch["label"], self.num_classes, dtype=jnp.float32)
    one_hot = one_hot * batch["valid"][:, None]
    # grads rows of padding are zero already, so plain sums are over the valid rows.
    return logits, jnp.sum(grads, axis=0), one_hot.T @ grads, (grads if self.top_k else None)

  def query_pass(self, prompt, frozen, mesh=None
                 ) -> tuple[dict[str, jax.Array], np.ndarray | None]:
    """(query features at `prompt`, query logits [M, C] in the query split's order).

    Each query batch is split over the mesh's `data` axis like a training batch (default:
    a one-device mesh); the features come back replicated, as the training step reads them.
    The logits are those of a forward pass at `prompt`: the trainer uses them as the
    validation evaluation when the queries are the validation split.
    """
    if self.queries is None:
      return {}, None
    mesh = mesh if mesh is not None else mesh_lib.single_device_mesh()
    if mesh not in self._query_batch:
      self._query_batch[mesh] = jax.jit(self._query_batch_unjitted,
                                        out_shardings=mesh_lib.replicated(mesh))
    query_batch = self._query_batch[mesh]
    prompt, frozen = mesh_lib.on_mesh((prompt, frozen), mesh)
    arrays = self.queries
    num = len(arrays["label"])
    order = batches_lib.length_order(arrays)
    total, class_sums, logits, rows = 0.0, 0.0, [], []
    for batch in batches_lib.iterate_batches(arrays, self.batch_size, order,
                                             keys=("tokens", "mask", "label"),
                                             trim_multiple=batches_lib.TRIM_MULTIPLE):
      valid = batch["valid"]  # shard_batch may pad past the batch: read rows up to its size
      batch_logits, batch_total, batch_classes, grads = query_batch(
          prompt, frozen, mesh_lib.shard_batch(batch, mesh))
      total, class_sums = total + batch_total, class_sums + batch_classes
      logits.append(mesh_lib.host_value(batch_logits)[:len(valid)][valid])
      if grads is not None:
        rows.append(mesh_lib.host_value(grads)[:len(valid)][valid])
    features = {"active": mesh_lib.replicate(np.float32(1.0), mesh),
                "mean": total / max(num, 1), "class_sums": class_sums}
    if self.top_k:
      in_order = np.empty((num,) + rows[0].shape[1:], rows[0].dtype)
      in_order[order] = np.concatenate(rows)
      features["grads"] = mesh_lib.replicate(in_order, mesh)
    logits_in_order = np.empty((num, self.num_classes), np.float32)
    logits_in_order[order] = np.concatenate(logits)
    return features, logits_in_order

  def idle_features(self, prompt_size: int, mesh=None) -> dict[str, jax.Array]:
    """Query features of an epoch that does not count against the queries: zeros of the
    query pass's shapes (so the step compiles once) and `active` 0 (no top-k entries)."""
    if self.queries is None:
      return {}
    mesh = mesh if mesh is not None else mesh_lib.single_device_mesh()
    features = {"active": np.float32(0.0), "mean": np.zeros(prompt_size, np.float32),
                "class_sums": np.zeros((self.num_classes, prompt_size), np.float32)}
    if self.top_k:
      features["grads"] = np.zeros((len(self.queries["label"]), prompt_size), np.float32)
    return mesh_lib.replicate(features, mesh)

  # ---- accumulation (inside the jitted training step) ----

  def init_accumulators(self) -> dict[str, jax.Array]:
    n, e = self.num_train, self.num_epochs
    acc = {"self_influence": jnp.zeros((n,), jnp.float32)}
    acc.update({name: jnp.zeros((e, n), jnp.float32) for name in DYNAMICS})
    if self.queries is not None:
      acc["mean_influence"] = jnp.zeros((n,), jnp.float32)
      acc["class_influence"] = jnp.zeros((n, self.num_classes), jnp.float32)
    if self.top_k:
      m, k = len(self.queries["label"]), self.top_k
      acc["opponent_scores"] = jnp.full((e, m, k), jnp.inf, jnp.float32)
      acc["opponent_positions"] = jnp.full((e, m, k), -1, jnp.int32)
      acc["proponent_scores"] = jnp.full((e, m, k), -jnp.inf, jnp.float32)
      acc["proponent_positions"] = jnp.full((e, m, k), -1, jnp.int32)
    return acc

  def step_gradients(self, prompt, frozen, batch):
    """(mean-loss gradient [P, D], per-example grads [B, d], losses [B], logits [B, C])
    from one forward and backward pass; the first is the plain training step's."""
    return grads_lib.mean_and_per_example_grads(self._outputs, prompt, frozen, batch)

  def accumulate(self, acc: dict, features: dict, batch, grads, losses, logits,
                 learning_rate, epoch_index) -> dict:
    """Adds one training step's contributions; pure jnp (traced inside the train step)."""
    acc = dict(acc)
    valid = batch["valid"]
    positions = batch[POSITION_KEY]
    # Padding rows repeat a real row's position: their contributions must be exactly zero.
    masked = lambda x: jnp.where(valid.reshape(valid.shape + (1,) * (x.ndim - 1)), x, 0.0)
    acc["self_influence"] = acc["self_influence"].at[positions].add(
        masked(learning_rate * jnp.sum(grads * grads, axis=1)))
    margin, p_label = _margin_and_p_label(logits, batch["label"])
    for name, value in (("loss", losses), ("margin", margin), ("p_label", p_label)):
      acc[name] = acc[name].at[epoch_index, positions].add(masked(value))
    if "mean" in features:
      acc["mean_influence"] = acc["mean_influence"].at[positions].add(
          masked(learning_rate * (grads @ features["mean"])))
      acc["class_influence"] = acc["class_influence"].at[positions].add(
          masked(learning_rate * (grads @ features["class_sums"].T)))
    if "grads" in features:
      scores = learning_rate * (grads @ features["grads"].T)  # [B, M]
      counted = valid & (features["active"] > 0)  # an idle epoch keeps its sentinels
      for kind, largest in (("opponent", False), ("proponent", True)):
        best = _merge_top_k(acc[f"{kind}_scores"][epoch_index],
                            acc[f"{kind}_positions"][epoch_index], scores, positions, counted,
                            largest)
        acc[f"{kind}_scores"] = acc[f"{kind}_scores"].at[epoch_index].set(best[0])
        acc[f"{kind}_positions"] = acc[f"{kind}_positions"].at[epoch_index].set(best[1])
    return acc

  # ---- persistence beside each epoch checkpoint ----

  @staticmethod
  def path(round_dir: str, epoch: int) -> str:
    return files.join(round_dir, DIRECTORY, f"epoch_{epoch}.npz")

  def save(self, round_dir: str, epoch: int, acc: dict) -> None:
    """Writes the accumulators as of the end of `epoch` as one whole file (runtime/files.py:
    atomic locally, one object on a bucket). Called before the epoch's Orbax checkpoint, so
    a finished epoch always has its file."""
    path = self.path(round_dir, epoch)
    files.makedirs(files.dirname(path))
    buffer = io.BytesIO()
    np.savez(buffer, **jax.device_get(acc))
    files.write_bytes(path, buffer.getvalue())

  def restore(self, round_dir: str, epoch: int) -> dict[str, jax.Array]:
    path = self.path(round_dir, epoch)
    if not files.exists(path):
      raise UserError(f"{path} is missing: epoch {epoch} was trained without in-run TracIn; "
                      "use a new --output_dir or tracin.source='checkpoints'")
    template = self.init_accumulators()
    with np.load(io.BytesIO(files.read_bytes(path))) as saved:
      if set(saved.files) != set(template):
        raise UserError(f"{path} holds {sorted(saved.files)}, expected {sorted(template)} "
                        "(different in-run settings); use a new --output_dir")
      return {name: jnp.asarray(saved[name]) for name in template}

  def result(self, acc: dict) -> InRunResult:
    host = {name: np.asarray(value) for name, value in jax.device_get(acc).items()}
    get = host.get
    return InRunResult(
        self_influence=host["self_influence"], mean_influence=get("mean_influence"),
        class_influence=get("class_influence"),
        query_ids=(None if self.queries is None
                   else np.asarray(self.queries["example_id"], np.int64)),
        opponent_positions=get("opponent_positions"), opponent_scores=get("opponent_scores"),
        proponent_positions=get("proponent_positions"),
        proponent_scores=get("proponent_scores"),
        dynamics=TrainingDynamics(loss=host["loss"], margin=host["margin"],
                                  p_label=host["p_label"]))
