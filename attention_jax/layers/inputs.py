"""`AttentionInputs`: what attention reads besides the tokens, as one value that models build
once and blocks, scans and attention layers pass on unchanged. Adding an input is one field
here and its use in `MultiHeadAttention`."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class AttentionInputs:
  """Every field is optional (None: not used).

  mask: bool, broadcast to [batch, heads, q_len, kv_len]: where a query may see a key.
  bias: float, broadcast to [batch, heads, q_len, kv_len]: added to the scores.
  kv_lengths: int [batch]: keys at positions >= length are padding.
  segment_ids: int [batch, length] (self-attention), or a (query ids [batch, q_len], key
    ids [batch, kv_len]) pair: a query sees only keys of its own segment (packed documents;
    0 for padding against real tokens' 1).
  positions: int [batch|1, q_len]: the tokens' rotary positions (packed rows restart them,
    left-padded rows start them at the first real token); by default counted from the
    bottom-right alignment, or the KV-cache index when decoding.
  causal: (static) a query sees keys at or before its own position.
  """
  mask: jax.Array | None = None
  bias: jax.Array | None = None
  kv_lengths: jax.Array | None = None
  segment_ids: Any = None
  positions: jax.Array | None = None
  causal: bool = flax.struct.field(pytree_node=False, default=False)
