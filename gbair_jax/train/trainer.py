"""Prompt tuning: a jitted pure train step, per-epoch Orbax checkpoints, resumable.

`train_prompt` trains the soft prompt of a `ClassifierSpec` on a tokenised train split,
evaluates each epoch on validation, writes `<round_dir>/metrics.json`, and picks up after
a kill from the last finished epoch with the same result as an uninterrupted run. Steps run
on the experiment's mesh: each global batch split over `data`, the prompt and optimizer
state replicated, the frozen weights where the experiment placed them.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm import tqdm

from gbair_jax.errors import UserError
from gbair_jax.models.backbone import Params
from gbair_jax.models.classifier import ClassifierSpec
from gbair_jax.runtime import files
from gbair_jax.runtime import mesh as mesh_lib
from gbair_jax.runtime import process
from gbair_jax.train import batches as batches_lib
from gbair_jax.train import checkpoints
from gbair_jax.train import ensemble as ensemble_lib
from gbair_jax.train import in_run as in_run_lib
from gbair_jax.train import optimizer as optimizer_lib
from gbair_jax.train.metrics import classification_metrics

Arrays = batches_lib.Arrays


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  prompt: jax.Array
  opt_state: Any


def mean_loss(spec: ClassifierSpec) -> Callable:
  """Mean cross-entropy over the valid rows of a batch, as a function of the prompt."""
  def loss(prompt, frozen, batch):
    losses = spec.example_losses(prompt, frozen, batch)
    weights = batch["valid"].astype(jnp.float32)
    return jnp.sum(losses * weights) / jnp.maximum(weights.sum(), 1.0)
  return loss


def make_train_step(spec: ClassifierSpec, optimizer: optax.GradientTransformation,
                    mesh: Mesh | None = None,
                    in_run: in_run_lib.InRunTracIn | None = None,
                    schedule: optax.Schedule | None = None, ensemble: bool = False):
  """`(state, frozen, batch) -> (state, metrics)`; frozen weights are an argument, never a
  closure constant, so they are not baked into the compiled program.

  With `ensemble`, the state holds N member prompts [N, P, D] (and N optimizer states) and
  every batch column is [rows, N, ...] (ensemble.member_batches): each member takes its own
  step on its own rows, independently of the others (train/ensemble.py).

  With a mesh, the batch comes split over `data` (mesh.shard_batch) and GSPMD sums the
  gradient over it; the new state is pinned replicated, as every process reads it.

  With `in_run` (and the learning-rate `schedule`), the step is
  `(state, frozen, batch, accumulators, query_features, epoch_index) -> (state, metrics,
  accumulators)`: its one backward pass gives the plain step's gradient (the update) and
  every row's own (per_example_grads.mean_and_per_example_grads), which it hands to
  `in_run.accumulate`; the accumulators are replicated like the state.
  """
  out_shardings = None if mesh is None else mesh_lib.replicated(mesh)
  if in_run is not None:
    return _make_in_run_step(optimizer, in_run, schedule, out_shardings)
  if ensemble:
    return _make_ensemble_step(spec, optimizer, out_shardings)
  loss_fn = mean_loss(spec)

  @functools.partial(jax.jit, out_shardings=out_shardings)
  def train_step(state: TrainState, frozen: Params, batch):
    loss, grads = jax.value_and_grad(loss_fn)(state.prompt, frozen, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.prompt)
    prompt = optax.apply_updates(state.prompt, updates)
    return TrainState(step=state.step + 1, prompt=prompt, opt_state=opt_state), {"loss": loss}

  return train_step


def _make_ensemble_step(spec: ClassifierSpec, optimizer: optax.GradientTransformation,
                        out_shardings):
  loss_fn = mean_loss(spec)

  def member_step(prompt, opt_state, frozen, batch):
    loss, grads = jax.value_and_grad(loss_fn)(prompt, frozen, batch)
    updates, opt_state = optimizer.update(grads, opt_state, prompt)
    return optax.apply_updates(prompt, updates), opt_state, loss

  @functools.partial(jax.jit, out_shardings=out_shardings)
  def ensemble_step(state: TrainState, frozen: Params, batch):
    # Member k: prompt k, optimizer state k, column k of every batch field. A loop, not
    # jax.vmap: on the 2-core CPU the vmapped step took 1.21 s where three plain ones took
    # 0.96 s (MiniLM-L6, batch 32; docs/BENCHMARKS.md).
    members = [member_step(state.prompt[k], jax.tree.map(lambda x: x[k], state.opt_state),
                           frozen, jax.tree.map(lambda x: x[:, k], batch))
               for k in range(state.prompt.shape[0])]
    prompt, opt_state, losses = jax.tree.map(lambda *xs: jnp.stack(xs), *members)
    return (TrainState(step=state.step + 1, prompt=prompt, opt_state=opt_state),
            {"loss": jnp.mean(losses)})

  return ensemble_step


def _make_in_run_step(optimizer, in_run: in_run_lib.InRunTracIn, schedule: optax.Schedule,
                      out_shardings):
  @functools.partial(jax.jit, out_shardings=out_shardings)
  def in_run_step(state: TrainState, frozen: Params, batch, accumulators, features, epoch_index):
    grad, grads, losses, logits = in_run.step_gradients(state.prompt, frozen, batch)
    updates, opt_state = optimizer.update(grad, state.opt_state, state.prompt)
    prompt = optax.apply_updates(state.prompt, updates)
    accumulators = in_run.accumulate(accumulators, features, batch, grads, losses, logits,
                                     schedule(state.step), epoch_index)
    weights = batch["valid"].astype(jnp.float32)
    metrics = {"loss": jnp.sum(losses * weights) / jnp.maximum(weights.sum(), 1.0)}
    return (TrainState(step=state.step + 1, prompt=prompt, opt_state=opt_state), metrics,
            accumulators)

  return in_run_step


def make_logits_fn(spec: ClassifierSpec, mesh: Mesh | None = None):
  """Jitted `(prompt, frozen, tokens, mask) -> logits`, replicated on the mesh's devices.
  An ensemble's prompts [N, P, D] give the log of the members' mean class probabilities."""
  out_shardings = None if mesh is None else mesh_lib.replicated(mesh)

  @functools.partial(jax.jit, out_shardings=out_shardings)
  def logits_fn(prompt, frozen, tokens, mask):
    if ensemble_lib.is_ensemble(prompt):  # a trace-time branch: one program per shape
      members = jnp.stack([spec.logits(p, frozen, tokens, mask) for p in prompt])
      return ensemble_lib.mean_probability_logits(members)
    return spec.logits(prompt, frozen, tokens, mask)
  return logits_fn


def predict_logits(spec: ClassifierSpec, prompt, frozen: Params, arrays: Arrays,
                   batch_size: int = 64, logits_fn=None, mesh: Mesh | None = None) -> np.ndarray:
  """Logits [N, C] for a whole split, in the split's order. Runs shortest texts first with
  trimmed padding (batches.length_order): the same logits, less compute. Batches are split
  over the mesh's `data` axis (default: a one-device mesh)."""
  mesh = mesh if mesh is not None else mesh_lib.single_device_mesh()
  logits_fn = logits_fn or make_logits_fn(spec, mesh)
  prompt, frozen = mesh_lib.on_mesh((prompt, frozen), mesh)
  order = batches_lib.length_order(arrays)
  out = []
  for batch in batches_lib.iterate_batches(arrays, batch_size, order, keys=("tokens", "mask"),
                                           trim_multiple=batches_lib.TRIM_MULTIPLE):
    placed = mesh_lib.shard_batch(batch, mesh)
    logits = mesh_lib.host_value(logits_fn(prompt, frozen, placed["tokens"], placed["mask"]))
    out.append(logits[:batch_size][batch["valid"]])
  if not out:
    return np.zeros((0, len(spec.label_names)), np.float32)
  logits = np.empty((len(order), out[0].shape[1]), out[0].dtype)
  logits[order] = np.concatenate(out)
  return logits


def evaluate(spec, prompt, frozen, arrays: Arrays, batch_size: int = 64, logits_fn=None,
             mesh: Mesh | None = None, threshold: float | None = None) -> dict:
  """accuracy / F1 / AUC of the split's own labels (validation and test are never corrupted);
  binary tasks also at a decision threshold (metrics.classification_metrics)."""
  logits = predict_logits(spec, prompt, frozen, arrays, batch_size, logits_fn, mesh)
  return classification_metrics(logits, arrays["label"], threshold)


@dataclasses.dataclass
class TrainResult:
  prompt: np.ndarray
  metrics: dict
  seconds: float
  in_run: in_run_lib.InRunResult | None = None  # with the `in_run` hook
  # The "validation" split's logits [M, C] at the final prompt (the last epoch's
  # evaluation), so scoring needs no pass of its own; None when this call trained no epoch.
  validation_logits: np.ndarray | None = None


@gin.configurable(denylist=["spec", "frozen", "splits", "round_dir", "initial_prompt", "mesh",
                           "in_run"])
def train_prompt(spec: ClassifierSpec, frozen: Params, splits: dict[str, Arrays], round_dir: str,
                 initial_prompt: np.ndarray | None = None, *, num_epochs: int = 3,
                 batch_size: int = 32, eval_batch_size: int = 64, seed: int = 0,
                 prompt_initializer: Callable | None = None, progress: bool = True,
                 tensorboard: bool = True, mesh: Mesh | None = None,
                 in_run: in_run_lib.InRunTracIn | None = None,
                 ensemble_size: int = 1) -> TrainResult:
  """Trains the prompt; one checkpoint per epoch; resumes from the last finished epoch.

  Args:
    spec, frozen: the classifier and its frozen backbone weights.
    splits: tokenised "train" (and "validation", "test" when present) arrays.
    round_dir: `<output_dir>/round_<r>`; checkpoints and metrics.json are written here.
    initial_prompt: warm start (recovery rounds); None initialises with
      `prompt_initializer` (default: class-label embeddings) from `seed`.
    num_epochs, batch_size, eval_batch_size, seed: the usual; the data order of epoch e is
      a function of (seed, e) only. Batch sizes are global: split over the mesh's `data`
      axis (padded with masked rows where it does not divide them).
    mesh: the experiment's mesh (default: a one-device mesh); `frozen` is placed on it
      unless it already is.
    in_run: accumulate in-run TracIn and training dynamics (train/in_run.py); they are
      saved beside each epoch checkpoint and restored on resume.
    ensemble_size: train this many prompts side by side (train/ensemble.py); the result's
      prompt is then [N, P, D] and every metric is the ensemble's. 1: one prompt [P, D].
  """
  ensemble = ensemble_lib.check_size(ensemble_size) > 1
  if ensemble and in_run is not None:
    raise UserError(f"train_prompt.ensemble_size={ensemble_size} cannot be combined with "
                    "tracin.source = 'in_run' (its accumulators follow one prompt); use "
                    "tracin.source = 'checkpoints' or ensemble_size = 1")
  if initial_prompt is not None and (np.shape(initial_prompt)[:-2] !=
                                     ((ensemble_size,) if ensemble else ())):
    raise UserError(f"train_prompt.ensemble_size={ensemble_size}: the warm-start prompt has "
                    f"shape {np.shape(initial_prompt)} (a run keeps one ensemble size throughout)")
  if in_run is not None:  # checks its settings against this training before any file exists
    in_run.setup(len(splits["train"]["label"]), num_epochs)
  files.makedirs(round_dir)
  metrics_path = files.join(round_dir, "metrics.json")
  schedule = optimizer_lib.learning_rate_schedule()
  optimizer = optimizer_lib.make_optimizer(schedule)
  train = splits["train"]
  steps_per_epoch = batches_lib.num_batches(len(train["label"]), batch_size)

  mesh = mesh if mesh is not None else mesh_lib.single_device_mesh()
  frozen = mesh_lib.on_mesh(frozen, mesh)
  if initial_prompt is None:
    initial_prompt = _initial_prompt(spec, frozen, seed, prompt_initializer, mesh, ensemble_size)
  prompt = mesh_lib.host_value(initial_prompt).astype(np.float32)
  # An ensemble's optimizer state is one per member, so no optimizer mixes members.
  init_opt = jax.vmap(optimizer.init) if ensemble else optimizer.init
  state = mesh_lib.replicate(TrainState(step=np.zeros((), np.int32), prompt=prompt,
                                        opt_state=init_opt(prompt)), mesh)

  mngr = checkpoints.manager(round_dir)
  history: list[dict] = []
  start_epoch = 1
  if mngr.latest_step() is not None:  # resume after a kill
    last = mngr.latest_step()
    prompt, opt_state, meta = checkpoints.restore_epoch(
        mngr, last, checkpoints.as_abstract(mesh_lib.host_tree(state.prompt)),
        checkpoints.as_abstract(mesh_lib.host_tree(state.opt_state)))
    state = mesh_lib.replicate(TrainState(step=np.asarray(meta["step"], np.int32),
                                          prompt=np.asarray(prompt), opt_state=opt_state), mesh)
    history = [checkpoints.restore_epoch_meta(mngr, e) for e in sorted(mngr.all_steps())]
    history = [h["metrics"] for h in history]
    start_epoch = last + 1

  train_step = make_train_step(spec, optimizer, mesh, in_run, schedule, ensemble)
  train_keys = ("tokens", "mask", "label")
  if in_run is not None:
    accumulators = (in_run.restore(round_dir, start_epoch - 1) if start_epoch > 1
                    else in_run.init_accumulators())
    query_features = None  # the query pass at the prompt each epoch starts from
    train = {**train, in_run_lib.POSITION_KEY: np.arange(len(train["label"]), dtype=np.int32)}
    train_keys += (in_run_lib.POSITION_KEY,)
  logits_fn = make_logits_fn(spec, mesh)
  primary = process.is_primary()
  writer = _tensorboard_writer(round_dir) if tensorboard and primary else None
  started = time.time()
  validation_logits = None
  for epoch in range(start_epoch, num_epochs + 1):
    order = batches_lib.epoch_order(len(train["label"]), seed, epoch)
    first_step = int(mesh_lib.host_value(state.step))
    losses, seen, epoch_start = [], 0, time.time()
    if in_run is not None and query_features is None:
      query_features = (in_run.query_pass(state.prompt, frozen, mesh)[0]
                        if in_run.counts_queries(epoch)
                        else in_run.idle_features(state.prompt.size, mesh))
    epoch_batches = (
        ensemble_lib.member_batches(train, batch_size, seed, epoch, ensemble_size, train_keys)
        if ensemble else batches_lib.iterate_batches(train, batch_size, order, keys=train_keys))
    bar = tqdm(epoch_batches, total=steps_per_epoch,
               desc=f"{files.basename(round_dir)} epoch {epoch}/{num_epochs}", disable=not progress,
               leave=False, dynamic_ncols=True)
    for step_in_epoch, batch in enumerate(bar):
      on_mesh = mesh_lib.shard_batch(batch, mesh)
      if in_run is None:
        state, step_metrics = train_step(state, frozen, on_mesh)
      else:
        if in_run.refreshes_queries(epoch, step_in_epoch):
          query_features, _ = in_run.query_pass(state.prompt, frozen, mesh)
        state, step_metrics, accumulators = train_step(state, frozen, on_mesh, accumulators,
                                                       query_features, np.int32(epoch - 1))
      losses.append(step_metrics["loss"])
      seen += int(batch["valid"].sum())  # an ensemble counts a row once per member
      if len(losses) % 5 == 0:
        bar.set_postfix(loss=f"{float(mesh_lib.host_value(losses[-1])):.4f}",
                        ex_per_s=f"{seen / (time.time() - epoch_start):.1f}")
    train_loss = float(np.mean([float(mesh_lib.host_value(l)) for l in losses]))
    record = {"epoch": epoch,
              "learning_rate": optimizer_lib.epoch_learning_rate(schedule, first_step, steps_per_epoch),
              "train_loss": train_loss,
              "examples_per_s": seen / max(time.time() - epoch_start, 1e-9)}
    query_features = validation_logits = None
    if (in_run is not None and epoch < num_epochs and in_run.counts_queries(epoch + 1)
        and in_run.queries is splits.get("validation")):
      # One forward + backward pass gives this epoch's evaluation and the next one's queries.
      query_features, validation_logits = in_run.query_pass(state.prompt, frozen, mesh)
    elif "validation" in splits:
      validation_logits = predict_logits(spec, state.prompt, frozen, splits["validation"],
                                         eval_batch_size, logits_fn, mesh)
    if validation_logits is not None:
      record["validation"] = classification_metrics(validation_logits,
                                                    splits["validation"]["label"])
    record["seconds"] = time.time() - epoch_start
    history.append(record)
    if in_run is not None and primary:
      in_run.save(round_dir, epoch, accumulators)
    # Host copies: with several processes the replicated state spans other hosts' devices.
    checkpoints.save_epoch(mngr, epoch, mesh_lib.host_tree(state.prompt),
                           mesh_lib.host_tree(state.opt_state),
                           {"epoch": epoch, "step": int(mesh_lib.host_value(state.step)),
                            "learning_rate": record["learning_rate"], "metrics": record})
    if writer is not None:
      scalars = {"train_loss": train_loss, "learning_rate": record["learning_rate"]}
      scalars.update({f"validation/{k}": v for k, v in record.get("validation", {}).items()})
      writer.write_scalars(epoch, scalars)
      writer.flush()
    if progress:
      val = record.get("validation", {})
      tqdm.write(f"{files.basename(round_dir)} epoch {epoch}: loss {train_loss:.4f}"
                 + "".join(f"  val_{k} {v:.4f}" for k, v in val.items()))

  metrics = {"epochs": history}
  if "test" in splits:
    # The decision threshold chosen on validation at the final epoch (0.5 = argmax without one).
    threshold = (history[-1].get("validation") or {}).get("threshold", 0.5) if history else 0.5
    metrics["test"] = evaluate(spec, state.prompt, frozen, splits["test"], eval_batch_size,
                               logits_fn, mesh, threshold=threshold)
  metrics.update(mesh_lib.describe(mesh))
  if primary:
    files.write_json(metrics_path, metrics)
  return TrainResult(prompt=mesh_lib.host_value(state.prompt), metrics=metrics,
                     seconds=time.time() - started,
                     in_run=None if in_run is None else in_run.result(accumulators),
                     validation_logits=validation_logits)


def _initial_prompt(spec: ClassifierSpec, frozen: Params, seed: int,
                    initializer: Callable | None, mesh: Mesh, ensemble_size: int = 1) -> jax.Array:
  """The first prompt (an ensemble's: [N, P, D], member 0 the single run's), computed on
  the mesh (the frozen embedding table may be split over several hosts' devices, which no
  eager op on one host could read)."""
  def init(frozen):
    if ensemble_size == 1:
      return spec.initial_prompt(jax.random.PRNGKey(seed), frozen, initializer)
    return jnp.stack([spec.initial_prompt(key, frozen, initializer)
                      for key in ensemble_lib.member_keys(seed, ensemble_size)])
  return jax.jit(init, out_shardings=mesh_lib.replicated(mesh))(frozen)


def _tensorboard_writer(round_dir: str):
  return files.tensorboard_writer(files.join(round_dir, "tensorboard"))
