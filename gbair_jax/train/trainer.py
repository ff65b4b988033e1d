"""Prompt tuning: a jitted pure train step, per-epoch Orbax checkpoints, resumable.

`train_prompt` trains the soft prompt of a `ClassifierSpec` on a tokenised train split,
evaluates each epoch on validation, writes `<round_dir>/metrics.json`, and picks up after
a kill from the last finished epoch with the same result as an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from gbair_jax.influence import distributed
from gbair_jax.models.backbone import Params
from gbair_jax.models.classifier import ClassifierSpec
from gbair_jax.runtime import files
from gbair_jax.train import batches as batches_lib
from gbair_jax.train import checkpoints
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
                    in_run: in_run_lib.InRunTracIn | None = None,
                    schedule: optax.Schedule | None = None):
  """`(state, frozen, batch) -> (state, metrics)`; frozen weights are an argument, never a
  closure constant, so they are not baked into the compiled program.

  With `in_run` (and the learning-rate `schedule`), the step is
  `(state, frozen, batch, accumulators, query_features, epoch_index) -> (state, metrics,
  accumulators)`: its one backward pass gives the plain step's gradient (the update) and
  every row's own (per_example_grads.mean_and_per_example_grads), which it hands to
  `in_run.accumulate`.
  """
  if in_run is not None:
    return _make_in_run_step(optimizer, in_run, schedule)
  loss_fn = mean_loss(spec)

  @jax.jit
  def train_step(state: TrainState, frozen: Params, batch):
    loss, grads = jax.value_and_grad(loss_fn)(state.prompt, frozen, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.prompt)
    prompt = optax.apply_updates(state.prompt, updates)
    return TrainState(step=state.step + 1, prompt=prompt, opt_state=opt_state), {"loss": loss}

  return train_step


def _make_in_run_step(optimizer, in_run: in_run_lib.InRunTracIn, schedule: optax.Schedule):
  @jax.jit
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


def make_logits_fn(spec: ClassifierSpec):
  @jax.jit
  def logits_fn(prompt, frozen, tokens, mask):
    return spec.logits(prompt, frozen, tokens, mask)
  return logits_fn


def predict_logits(spec: ClassifierSpec, prompt, frozen: Params, arrays: Arrays,
                   batch_size: int = 64, logits_fn=None) -> np.ndarray:
  """Logits [N, C] for a whole split, in the split's order. Runs shortest texts first with
  trimmed padding (batches.length_order): the same logits, less compute."""
  logits_fn = logits_fn or make_logits_fn(spec)
  order = batches_lib.length_order(arrays)
  out = []
  for batch in batches_lib.iterate_batches(arrays, batch_size, order, keys=("tokens", "mask"),
                                           trim_multiple=batches_lib.TRIM_MULTIPLE):
    logits = np.asarray(logits_fn(prompt, frozen, batch["tokens"], batch["mask"]))
    out.append(logits[batch["valid"]])
  if not out:
    return np.zeros((0, len(spec.label_names)), np.float32)
  logits = np.empty((len(order), out[0].shape[1]), out[0].dtype)
  logits[order] = np.concatenate(out)
  return logits


def evaluate(spec, prompt, frozen, arrays: Arrays, batch_size: int = 64, logits_fn=None,
             threshold: float | None = None) -> dict:
  """accuracy / F1 / AUC of the split's own labels (validation and test are never corrupted);
  binary tasks also at a decision threshold (metrics.classification_metrics)."""
  logits = predict_logits(spec, prompt, frozen, arrays, batch_size, logits_fn)
  return classification_metrics(logits, arrays["label"], threshold)


@dataclasses.dataclass
class TrainResult:
  prompt: np.ndarray
  metrics: dict
  seconds: float
  in_run: in_run_lib.InRunResult | None = None  # with the `in_run` hook


@gin.configurable(denylist=["spec", "frozen", "splits", "round_dir", "initial_prompt", "in_run"])
def train_prompt(spec: ClassifierSpec, frozen: Params, splits: dict[str, Arrays], round_dir: str,
                 initial_prompt: np.ndarray | None = None, *, num_epochs: int = 3,
                 batch_size: int = 32, eval_batch_size: int = 64, seed: int = 0,
                 prompt_initializer: Callable | None = None, progress: bool = True,
                 tensorboard: bool = True,
                 in_run: in_run_lib.InRunTracIn | None = None) -> TrainResult:
  """Trains the prompt; one checkpoint per epoch; resumes from the last finished epoch.

  Args:
    spec, frozen: the classifier and its frozen backbone weights.
    splits: tokenised "train" (and "validation", "test" when present) arrays.
    round_dir: `<output_dir>/round_<r>`; checkpoints and metrics.json are written here.
    initial_prompt: warm start (recovery rounds); None initialises with
      `prompt_initializer` (default: class-label embeddings) from `seed`.
    num_epochs, batch_size, eval_batch_size, seed: the usual; the data order of epoch e is
      a function of (seed, e) only.
    in_run: accumulate in-run TracIn and training dynamics (train/in_run.py); they are
      saved beside each epoch checkpoint and restored on resume.
  """
  files.makedirs(round_dir)
  metrics_path = files.join(round_dir, "metrics.json")
  schedule = optimizer_lib.learning_rate_schedule()
  optimizer = optimizer_lib.make_optimizer(schedule)
  train = splits["train"]
  steps_per_epoch = batches_lib.num_batches(len(train["label"]), batch_size)

  if initial_prompt is None:
    initial_prompt = spec.initial_prompt(jax.random.PRNGKey(seed), frozen, prompt_initializer)
  prompt = jnp.asarray(initial_prompt, jnp.float32)
  state = TrainState(step=jnp.zeros((), jnp.int32), prompt=prompt, opt_state=optimizer.init(prompt))

  mngr = checkpoints.manager(round_dir)
  history: list[dict] = []
  start_epoch = 1
  if mngr.latest_step() is not None:  # resume after a kill
    last = mngr.latest_step()
    prompt, opt_state, meta = checkpoints.restore_epoch(
        mngr, last, checkpoints.as_abstract(state.prompt), checkpoints.as_abstract(state.opt_state))
    state = TrainState(step=jnp.asarray(meta["step"], jnp.int32), prompt=jnp.asarray(prompt),
                       opt_state=opt_state)
    history = [checkpoints.restore_epoch_meta(mngr, e) for e in sorted(mngr.all_steps())]
    history = [h["metrics"] for h in history]
    start_epoch = last + 1

  train_step = make_train_step(spec, optimizer, in_run, schedule)
  train_keys = ("tokens", "mask", "label")
  if in_run is not None:
    in_run.setup(len(train["label"]), num_epochs)
    accumulators = (in_run.restore(round_dir, start_epoch - 1) if start_epoch > 1
                    else in_run.init_accumulators())
    query_features = None  # the query pass at the prompt each epoch starts from
    train = {**train, in_run_lib.POSITION_KEY: np.arange(len(train["label"]), dtype=np.int32)}
    train_keys += (in_run_lib.POSITION_KEY,)
  logits_fn = make_logits_fn(spec)
  primary = distributed.is_primary()
  writer = _tensorboard_writer(round_dir) if tensorboard and primary else None
  started = time.time()
  for epoch in range(start_epoch, num_epochs + 1):
    order = batches_lib.epoch_order(len(train["label"]), seed, epoch)
    first_step = int(state.step)
    losses, seen, epoch_start = [], 0, time.time()
    if in_run is not None and query_features is None:
      query_features, _ = in_run.query_pass(state.prompt, frozen)
    bar = tqdm(batches_lib.iterate_batches(train, batch_size, order, keys=train_keys),
               total=steps_per_epoch,
               desc=f"{files.basename(round_dir)} epoch {epoch}/{num_epochs}", disable=not progress,
               leave=False, dynamic_ncols=True)
    for batch in bar:
      if in_run is None:
        state, step_metrics = train_step(state, frozen, batch)
      else:
        state, step_metrics, accumulators = train_step(state, frozen, batch, accumulators,
                                                       query_features, np.int32(epoch - 1))
      losses.append(step_metrics["loss"])
      seen += int(batch["valid"].sum())
      if len(losses) % 5 == 0:
        bar.set_postfix(loss=f"{float(losses[-1]):.4f}",
                        ex_per_s=f"{seen / (time.time() - epoch_start):.1f}")
    train_loss = float(np.mean([float(l) for l in losses]))
    record = {"epoch": epoch,
              "learning_rate": optimizer_lib.epoch_learning_rate(schedule, first_step, steps_per_epoch),
              "train_loss": train_loss,
              "examples_per_s": seen / max(time.time() - epoch_start, 1e-9)}
    query_features = None
    if (in_run is not None and epoch < num_epochs and in_run.queries is not None
        and in_run.queries is splits.get("validation")):
      # One forward + backward pass gives this epoch's evaluation and the next one's queries.
      query_features, logits = in_run.query_pass(state.prompt, frozen)
      record["validation"] = classification_metrics(logits, splits["validation"]["label"])
    elif "validation" in splits:
      record["validation"] = evaluate(spec, state.prompt, frozen, splits["validation"],
                                      eval_batch_size, logits_fn)
    record["seconds"] = time.time() - epoch_start
    history.append(record)
    if in_run is not None and primary:
      in_run.save(round_dir, epoch, accumulators)
    checkpoints.save_epoch(mngr, epoch, state.prompt, state.opt_state,
                           {"epoch": epoch, "step": int(state.step),
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
                               logits_fn, threshold=threshold)
  if primary:
    files.write_json(metrics_path, metrics)
  return TrainResult(prompt=np.asarray(state.prompt), metrics=metrics, seconds=time.time() - started,
                     in_run=None if in_run is None else in_run.result(accumulators))


def _tensorboard_writer(round_dir: str):
  return files.tensorboard_writer(files.join(round_dir, "tensorboard"))
