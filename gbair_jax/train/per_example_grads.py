"""Per-example soft-prompt gradients for a batch: the kernel that TracIn is built on.

Model-agnostic: it sees only a `loss_fn(prompt, frozen, batch, per_example_prompt=None)`
returning float32 per-example losses [B], and returns one flattened prompt gradient per row.
It lives in train/ because the trainer uses it too (in-run TracIn); influence/ imports it.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

# loss_fn(prompt [P, D], frozen pytree, batch dict, per_example_prompt [B, P, D] | None) -> [B]
LossFn = Callable[..., jax.Array]
Batch = Mapping[str, Any]

METHODS = ("copies", "vmap")
# "copies" is one batched backward pass (gradient w.r.t. per-example prompt copies); it
# beat vmap(grad) in every shape we measured (docs/BENCHMARKS.md, TracIn kernel throughput).
DEFAULT_METHOD = "copies"


def device_batch(batch: Batch) -> dict[str, np.ndarray]:
  """The fields of `batch` that can go to a device: numeric or bool arrays, no `example_id`.

  Example ids are int64 and would be truncated on device without `jax_enable_x64`; the
  engine keeps them on the host. Strings (e.g. `text`) cannot be device arrays at all.
  """
  out = {}
  for key, value in batch.items():
    if key == "example_id":
      continue
    if isinstance(value, jax.Array):
      out[key] = value
      continue
    value = np.asarray(value)
    if value.dtype.kind in "biuf":
      out[key] = value
  return out


def _copies_grads(loss_fn: LossFn, prompt: jax.Array, frozen: Any, batch: Batch) -> jax.Array:
  """Gradient w.r.t. per-example copies of the prompt: one batched backward pass."""
  batch_size = batch["valid"].shape[0]
  copies = jnp.broadcast_to(prompt, (batch_size,) + prompt.shape)

  def summed_loss(copies):
    # Row b's loss depends only on copies[b], so d(sum)/d(copies[b]) is example b's gradient.
    return jnp.sum(loss_fn(prompt, frozen, batch, per_example_prompt=copies))

  return jax.grad(summed_loss)(copies)


def _vmap_grads(loss_fn: LossFn, prompt: jax.Array, frozen: Any, batch: Batch) -> jax.Array:
  """vmap over examples of the gradient of one example's loss (a batch of one)."""

  def one_loss(prompt, example):
    single = jax.tree.map(lambda x: x[None], example)
    return loss_fn(prompt, frozen, single)[0]

  return jax.vmap(jax.grad(one_loss), in_axes=(None, 0))(prompt, dict(batch))


def per_example_grads_unjitted(loss_fn: LossFn, prompt: jax.Array, frozen: Any, batch: Batch,
                               method: str = DEFAULT_METHOD) -> jax.Array:
  """`per_example_grads` without its own `jit`, for use inside other traced functions."""
  if method == "copies":
    grads = _copies_grads(loss_fn, prompt, frozen, batch)
  elif method == "vmap":
    grads = _vmap_grads(loss_fn, prompt, frozen, batch)
  else:
    raise ValueError(f"per_example_grads.method must be one of {METHODS}, got {method!r}")
  grads = grads.reshape(grads.shape[0], -1).astype(jnp.float32)
  # Padded rows may hold garbage (even NaN losses); zero makes them inert in every dot product.
  return jnp.where(batch["valid"][:, None], grads, 0.0)


_per_example_grads_jit = jax.jit(per_example_grads_unjitted,
                                 static_argnames=("loss_fn", "method"))


def per_example_grads(loss_fn: LossFn, prompt: jax.Array, frozen: Any, batch: Batch,
                      method: str = DEFAULT_METHOD) -> jax.Array:
  """Flattened gradient of each example's loss w.r.t. the prompt: float32 [B, P * D].

  Args:
    loss_fn: per-example losses `(prompt, frozen, batch, per_example_prompt=None) -> [B]`;
      must be hashable (a function or a frozen dataclass's method), it is a static argument.
    prompt: the soft prompt [P, D] at which to differentiate.
    frozen: frozen weights, any pytree; an argument (not a closure) so jit does not embed it.
    batch: dict of arrays with leading dim B, with `valid` (bool [B]); strings and
      `example_id` are dropped before it reaches the device (see `device_batch`).
    method: "copies" (gradient w.r.t. per-example prompt copies) or "vmap" (vmap of grad).

  Returns:
    [B, P * D] float32; rows where `valid` is False are zero.
  """
  return _per_example_grads_jit(loss_fn, prompt, frozen, device_batch(batch), method)



def mean_and_per_example_grads(fn: Callable, prompt: jax.Array, frozen: Any, batch: Batch
                               ) -> tuple[jax.Array, jax.Array, jax.Array, Any]:
  """The training step's gradient and every row's own, from one forward and backward pass.

  `fn(prompt, frozen, batch, per_example_prompt) -> (losses [B], aux)`. The model runs on
  per-example copies `prompt + delta` (delta = 0) and differentiates the mean loss over the
  valid rows w.r.t. both: the prompt's gradient comes out of the same backward ops as the
  plain mean-loss gradient (bitwise, on the backbones tested: Adam turns float noise in the
  update into a different run within an epoch), delta's rows are the per-example gradients
  divided by the valid count.

  Returns (mean gradient [P, D], per-example grads [B, P * D] float32 with padded rows
  zero, losses [B], aux). Unjitted: meant for the inside of a training step.
  """
  batch_size = batch["valid"].shape[0]
  weights = batch["valid"].astype(jnp.float32)
  count = jnp.maximum(weights.sum(), 1.0)

  def mean_loss(prompt, delta):
    losses, aux = fn(prompt, frozen, batch, jnp.broadcast_to(prompt, delta.shape) + delta)
    return jnp.sum(losses * weights) / count, (losses, aux)

  delta = jnp.zeros((batch_size,) + prompt.shape, prompt.dtype)
  (mean_grad, delta_grads), (losses, aux) = jax.grad(mean_loss, argnums=(0, 1), has_aux=True)(
      prompt, delta)
  grads = delta_grads.reshape(batch_size, -1).astype(jnp.float32) * count
  return mean_grad, jnp.where(batch["valid"][:, None], grads, 0.0), losses, aux


def per_example_grads_with_aux(fn: Callable, prompt: jax.Array, frozen: Any,
                               batch: Batch) -> tuple[jax.Array, jax.Array, Any]:
  """Per-example prompt gradients plus what the forward pass computed, from one backward pass.

  `fn(prompt, frozen, batch, per_example_prompt) -> (losses [B], aux)`. Returns
  (grads [B, P * D] float32 with padded rows zero, losses [B], aux). Unjitted.
  """
  batch_size = batch["valid"].shape[0]
  copies = jnp.broadcast_to(prompt, (batch_size,) + prompt.shape)

  def summed_loss(copies):
    losses, aux = fn(prompt, frozen, batch, copies)
    return jnp.sum(losses), (losses, aux)

  grads, (losses, aux) = jax.grad(summed_loss, has_aux=True)(copies)
  grads = grads.reshape(batch_size, -1).astype(jnp.float32)
  return jnp.where(batch["valid"][:, None], grads, 0.0), losses, aux
