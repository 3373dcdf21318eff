"""Sliding-window attention with first-token attention sinks (Xiao et al. 2024, StreamingLLM).

Each query sees the keys within `local_window` of its (bottom-right aligned) diagonal plus the
first `sink_tokens` keys, which absorb the attention mass softmax must put somewhere (not
the learned per-head `sinks` logits of flash and dot_product). Runs on the flash kernel, which
visits only the window's key blocks and the sink blocks: cost O(T·w·d). A decoder keeps only
the sink tokens and the last w+1 keys (a bounded cache; see the attention layer's decode
mode).
"""

from __future__ import annotations

from attention_jax.kernels.flash import flash_attention


def sliding_window_attention(query, key, value, *, causal=False, kv_lengths=None,
                             segment_ids=None, local_window=256, sink_tokens=4, scale=None,
                             block_q=256, block_k=512):
  """Softmax attention over a sliding window of keys plus `sink_tokens` always-visible first keys.

  Args:
    query, key, value, causal, kv_lengths, segment_ids, scale, block_q, block_k: as
      `flash_attention`.
    local_window: int w or (left, right): the reach around each query's diagonal (causal caps
      the right reach at 0, so a causal query sees w + 1 recent keys).
    sink_tokens: how many first keys every query also sees (0: a plain sliding window).

  Returns:
    [batch, q_len, heads, value_dim] in query's dtype.
  """
  if local_window is None:
    raise ValueError("kernel 'sliding_window' needs a `local_window` (an int w or a "
                     "(left, right) pair); for unbounded attention use 'flash'.")
  return flash_attention(query, key, value, causal=causal, kv_lengths=kv_lengths,
                         segment_ids=segment_ids, local_window=local_window,
                         sink_tokens=sink_tokens,
                         scale=scale, block_q=block_q, block_k=block_k)
