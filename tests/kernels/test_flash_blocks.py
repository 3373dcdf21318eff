"""The blockwise kernel visits exactly the blocks that hold a visible entry, and masks only
blocks that hold a masked one (the skipping is exact, not just safe)."""

import itertools

import numpy as np
import pytest

from attention_jax.kernels import flash, masks
from tests.kernels import reference

PLANS = [  # (q_len, kv_len, block_q, block_k, causal, local_window, kv_length, sink_tokens)
    (64, 64, 16, 16, True, None, None, 0),
    (64, 64, 16, 8, False, None, None, 0),
    (50, 70, 16, 32, True, None, None, 0),
    (70, 50, 8, 16, True, None, None, 0),
    (1, 100, 1, 16, True, None, None, 0),
    (64, 64, 16, 16, False, 10, None, 0),
    (64, 96, 8, 16, True, (20, 0), None, 0),
    (40, 90, 16, 16, False, (5, 30), None, 0),
    (64, 64, 16, 16, True, None, 37, 0),
    (64, 64, 16, 16, False, None, 0, 0),
    # first-token sinks: the first keys stay visible beside the window
    (64, 64, 16, 16, True, 10, None, 4),
    (96, 96, 8, 8, True, 12, None, 20),
    (40, 90, 16, 16, False, (5, 30), None, 3),
    (64, 64, 16, 16, True, 10, 60, 4),
    (1, 100, 1, 16, True, 30, None, 16),
]


def make_plan(tq, tk, bq, bk, causal, window, kv_length, sink_tokens):
  left, right = masks.window_bounds(window, causal)
  return flash._Plan(q_len=tq, kv_len=tk, block_q=bq, block_k=bk, scale=1.0, left=left,
                     right=right, has_dense_mask=False, has_segments=False,
                     has_lengths=kv_length is not None, sink_tokens=sink_tokens)


@pytest.mark.parametrize("spec", PLANS, ids=str)
def test_visited_blocks_are_exactly_the_visible_ones(spec):
  tq, tk, bq, bk, causal, window, kv_length, sink_tokens = spec
  plan = make_plan(*spec)
  allowed = reference.mask_reference(
      1, tq, tk, causal=causal, local_window=window, sink_tokens=sink_tokens,
      kv_lengths=None if kv_length is None else [kv_length])[0, 0]
  blocks = list(itertools.product(range(plan.num_q_blocks), range(plan.num_kv_blocks)))
  block_of = lambda i, j: allowed[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
  visible = {(i, j) for i, j in blocks if block_of(i, j).any()}

  forward = set()
  for i in range(plan.num_q_blocks):
    lo, hi = flash._kv_block_range(plan, i, kv_length)
    forward |= {(i, j) for j in range(int(lo), int(hi))}
    if sink_tokens:  # the kernel's second loop: sink blocks left of the window
      forward |= {(i, j) for j in range(min(plan.num_sink_token_blocks, int(hi), int(lo)))}
  backward = set()
  for j in range(plan.num_kv_blocks):
    lo, hi = flash._q_block_range(plan, j, kv_length)
    backward |= {(i, j) for i in range(int(lo), int(hi))}
  assert forward == visible
  assert backward == visible
  if causal and window is None and kv_length is None and tq == tk and bq == bk:
    n = plan.num_q_blocks
    assert len(visible) == n * (n + 1) // 2  # causal computes about half the blocks

  if kv_length is None:  # then only structurally partial blocks are masked
    for i, j in visible:
      padded = np.zeros((bq, bk), bool)
      real = block_of(i, j)
      padded[:real.shape[0], :real.shape[1]] = real
      has_masked = not padded[:real.shape[0]].all()  # padded query rows do not matter
      assert bool(flash._block_is_partial(plan, i, j)) == has_masked, (i, j)
