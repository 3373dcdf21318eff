"""Grouped matmuls for a mixture of experts' dropless dispatch: rows sorted by expert, each
group of rows times its own expert's matrix, computing only the rows there are.

`jax.lax.ragged_dot` says this in one op, but XLA:CPU computes it densely (every row times
every expert's matrix, then masked; measured in docs/results) and XLA:GPU in jaxlib 0.10 does
the same unless a cuDNN fusion applies, in the forward and in the backward. The blocked form
here is plain XLA on every backend: each group's rows are padded to whole blocks of `block`
rows, every block belongs to one expert, and a loop multiplies each used block by its
expert's matrix (blocks past the last used one are skipped). Its backward is a custom VJP of
the same shape: the rows' gradient block by block through the transposed matrices, and the
weights' gradient accumulated in place into [groups, K, N], one block's outer product at a
time. Nothing is ever [rows, groups, ...]; the work is rows + at most groups · (block - 1)
padding rows.

    layout = block_layout(group_sizes, num_rows=M, block=128)
    x_blocks = to_blocks(x, layout)                            # [G, block, K]
    y = from_blocks(grouped_matmul(x_blocks, w, layout), layout)   # [M, N]
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class BlockLayout(NamedTuple):
  """Where the M sorted rows sit among G blocks of `block` rows: position [M] (each row's
  index in the padded [G · block] layout), block_group [G] (each block's group; blocks past
  the used ones name the last group and hold only padding), used_blocks (a scalar)."""
  position: jax.Array
  block_group: jax.Array
  used_blocks: jax.Array
  block: int


def block_size(num_rows: int, num_groups: int, block: int = 128) -> int:
  """`block`, or a smaller power of two (at least 8) when an even share of rows per group is
  smaller: small problems are not padded to 128 rows per expert."""
  share = max(1, math.ceil(num_rows / num_groups))
  return min(block, max(8, 1 << (share - 1).bit_length()))


def block_layout(group_sizes, num_rows: int, block: int) -> BlockLayout:
  """The padded layout of num_rows rows sorted by group, group_sizes [E] (int, summing to at
  most num_rows; rows past the sum belong to no group and are left out): group e's rows
  start a new block. G = (M + E·(block − 1)) // block blocks always suffice (a static bound:
  the sum over groups of ceil(size / block))."""
  num_groups = group_sizes.shape[0]
  sizes = group_sizes.astype(jnp.int32)
  blocks_per_group = (sizes + block - 1) // block
  block_ends = jnp.cumsum(blocks_per_group)  # in blocks
  row_ends = jnp.cumsum(sizes)
  rows = jnp.arange(num_rows, dtype=jnp.int32)
  row_group = jnp.searchsorted(row_ends, rows, side="right")
  first_block = block_ends - blocks_per_group
  num_blocks = (num_rows + num_groups * (block - 1)) // block
  row_group = jnp.minimum(row_group, num_groups - 1)
  position = jnp.where(rows < row_ends[-1],  # no group's rows: out of range, left out
                       first_block[row_group] * block + rows - (row_ends - sizes)[row_group],
                       num_blocks * block)
  block_group = jnp.minimum(
      jnp.searchsorted(block_ends, jnp.arange(num_blocks, dtype=jnp.int32), side="right"),
      num_groups - 1).astype(jnp.int32)
  return BlockLayout(position.astype(jnp.int32), block_group, block_ends[-1], block)


def to_blocks(rows, layout: BlockLayout):
  """rows [M, K] sorted by group -> [G, block, K], padding rows zero."""
  num_blocks = layout.block_group.shape[0]
  padded = jnp.zeros((num_blocks * layout.block, rows.shape[-1]), rows.dtype)
  # Positions are distinct: an add is the set, and its transpose is a plain gather.
  return padded.at[layout.position].add(rows, mode="drop").reshape(
      num_blocks, layout.block, -1)


def from_blocks(blocks, layout: BlockLayout):
  """[G, block, N] -> the M rows' [M, N] (padding left out; rows of no group zero)."""
  return blocks.reshape(-1, blocks.shape[-1]).at[layout.position].get(mode="fill",
                                                                       fill_value=0)


def _expert(w, group):
  return lax.dynamic_index_in_dim(w, group, keepdims=False)


def _blocks_loop(blocks, block_group, used_blocks, compute, out_shape, dtype):
  """[G, block, out] with compute(block [block, K], its group) for used blocks, 0 after."""
  def step(_, inputs):
    index, group, block = inputs
    return None, lax.cond(index < used_blocks, lambda: compute(block, group).astype(dtype),
                          lambda: jnp.zeros(out_shape, dtype))
  num_blocks = block_group.shape[0]
  return lax.scan(step, None, (jnp.arange(num_blocks), block_group, blocks))[1]


@jax.custom_vjp
def _grouped_matmul(blocks, w, block_group, used_blocks):
  dtype = jnp.result_type(blocks.dtype, w.dtype)
  return _blocks_loop(
      blocks, block_group, used_blocks,
      lambda x, g: jnp.dot(x, _expert(w, g), preferred_element_type=jnp.float32),
      (blocks.shape[1], w.shape[-1]), dtype)


def _forward(blocks, w, block_group, used_blocks):
  return (_grouped_matmul(blocks, w, block_group, used_blocks),
          (blocks, w, block_group, used_blocks))


def _backward(residuals, cotangent):
  blocks, w, block_group, used_blocks = residuals
  d_blocks = _blocks_loop(
      cotangent, block_group, used_blocks,
      lambda dy, g: jnp.dot(dy, _expert(w, g).T, preferred_element_type=jnp.float32),
      blocks.shape[1:], blocks.dtype)

  def accumulate(d_w, inputs):  # d_w[group] += x^T dy, in place
    index, group, x, dy = inputs
    def add():
      outer = jnp.dot(x.T, dy, preferred_element_type=jnp.float32)
      return lax.dynamic_update_index_in_dim(d_w, _expert(d_w, group) + outer, group, 0)
    return lax.cond(index < used_blocks, add, lambda: d_w), None
  d_w, _ = lax.scan(accumulate, jnp.zeros(w.shape, jnp.float32),
                    (jnp.arange(block_group.shape[0]), block_group, blocks, cotangent))
  return d_blocks, d_w.astype(w.dtype), None, None


_grouped_matmul.defvjp(_forward, _backward)


def grouped_matmul(blocks, w, layout: BlockLayout):
  """blocks [G, block, K] (`to_blocks`), w [E, K, N] -> [G, block, N]: each used block times
  its group's matrix (float32 accumulation; unused blocks zero). Differentiable in blocks
  and w without densifying (module docstring)."""
  if blocks.shape[-1] != w.shape[1]:
    raise ValueError(f"grouped_matmul: rows of width {blocks.shape[-1]} against matrices "
                     f"[groups, {w.shape[1]}, {w.shape[2]}].")
  return _grouped_matmul(blocks, w, layout.block_group, layout.used_blocks)
