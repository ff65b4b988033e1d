"""Seeded random (Johnson-Lindenstrauss) projection of gradients from d to k dimensions.

E<Rx, Ry> = <x, y> for a Gaussian R with variance 1/k, so TracIn dot products survive the
projection; the same seed gives the same map everywhere (every checkpoint, device and host).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from gbair_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class RandomProjection:
  """A d -> `dim` Gaussian map, generated in row blocks of `block_rows` from `seed`.

  Block i of the matrix comes from `fold_in(key(seed), i)`, so the map can be built whole
  (`matrix`) or generated block by block inside a computation (`project` with no matrix):
  both give the same numbers. Whole is faster; blocks keep memory at block_rows x dim when
  d x dim floats would not fit (a 100 x 4096 prompt projected to 4096 is 6.7 GB whole).
  """

  dim: int
  seed: int = 0
  block_rows: int = 1024
  max_matrix_bytes: int = 256 * 2**20

  def __post_init__(self):
    if self.dim < 1:
      raise UserError(f"tracin_opponents.projection_dim (RandomProjection.dim) must be >= 1, "
                      f"got {self.dim}")
    if self.block_rows < 1:
      raise UserError(f"RandomProjection.block_rows must be >= 1, got {self.block_rows}")

  def _num_blocks(self, input_dim: int) -> int:
    return math.ceil(input_dim / self.block_rows)

  def fits_in_memory(self, input_dim: int) -> bool:
    """Whether the whole [input_dim, dim] matrix stays under `max_matrix_bytes`."""
    return input_dim * self.dim * 4 <= self.max_matrix_bytes

  def matrix(self, input_dim: int) -> jax.Array:
    """The whole map as a float32 [input_dim, dim] matrix."""
    return _whole_matrix(self.seed, self._num_blocks(input_dim), self.block_rows,
                         self.dim)[:input_dim]

  def project(self, grads: jax.Array, matrix: jax.Array | None = None) -> jax.Array:
    """[B, d] -> [B, dim]; with no `matrix`, generates it block by block (traceable)."""
    if matrix is not None:
      return grads @ matrix
    batch_size, input_dim = grads.shape
    num_blocks = self._num_blocks(input_dim)
    padded = jnp.pad(grads, ((0, 0), (0, num_blocks * self.block_rows - input_dim)))
    blocks = padded.reshape(batch_size, num_blocks, self.block_rows).transpose(1, 0, 2)

    def add_block(total, index_and_rows):
      index, rows = index_and_rows
      return total + rows @ _block(self.seed, index, self.block_rows, self.dim), None

    # The first block starts the sum (not zeros): inside shard_map the carry then varies
    # over the mesh axes that `grads` varies over, as scan requires.
    total = blocks[0] @ _block(self.seed, 0, self.block_rows, self.dim)
    total, _ = jax.lax.scan(add_block, total, (jnp.arange(1, num_blocks), blocks[1:]))
    return total


def _block(seed, index, block_rows: int, dim: int) -> jax.Array:
  """Rows [index * block_rows, (index + 1) * block_rows) of the map."""
  key = jax.random.fold_in(jax.random.key(seed), index)
  return jax.random.normal(key, (block_rows, dim), jnp.float32) / math.sqrt(dim)


# The seed is traced, not static: compiling the RNG is slow on CPU, so seeds share one program.
@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _whole_matrix(seed, num_blocks: int, block_rows: int, dim: int) -> jax.Array:
  blocks = jax.lax.map(lambda index: _block(seed, index, block_rows, dim), jnp.arange(num_blocks))
  return blocks.reshape(num_blocks * block_rows, dim)
