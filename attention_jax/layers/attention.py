"""Multi-head attention: Q/K/V/output projections around any kernel from the registry."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from attention_jax import kernels
from attention_jax.kernels import positional
from attention_jax.layers import caches
from attention_jax.layers import lora as lora_lib

default_kernel_init = nn.initializers.normal(stddev=0.02)
POSITIONS = ("none", "rotary", "alibi", "relative")


def head_dims(features: int, num_heads: int, num_kv_heads: int | None,
              head_dim: int | None) -> tuple[int, int]:
  """(kv_heads, head_dim) with clear errors for widths that do not split into heads."""
  if head_dim is None:
    if features % num_heads:
      raise ValueError(f"width {features} is not divisible by num_heads={num_heads}; choose a "
                       "width that is a multiple of the head count, or set head_dim.")
    head_dim = features // num_heads
  kv_heads = num_heads if num_kv_heads is None else num_kv_heads
  if num_heads % kv_heads:
    raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={kv_heads}.")
  return kv_heads, head_dim


_WHY = {
    "dropout_rate": "attention dropout (set attention_dropout_rate=0 or run deterministic)",
    "bias": "an additive bias (ALiBi positions or a `bias` argument)",
    "return_weights": "returned attention weights (sow_weights=True)",
    "mask": "a boolean mask", "kv_lengths": "padding lengths",
    "segment_ids": "packed-sequence segment ids", "causal": "causal masking",
    "local_window": "a local (sliding) window",
}


def _check_kernel_takes(kernel, kwargs):
  """Fails early, naming what the layer needs, when the kernel cannot take an argument."""
  missing = [name for name in kwargs if name != "dropout_rng" and not kernel.supports(name)]
  if missing:
    able = kernels.supporting(*missing)
    raise ValueError(
        f"attention kernel {kernel.name!r} is incompatible with this layer: it needs "
        + "; ".join(_WHY.get(m, m) for m in missing)
        + f" ({kernel.name!r} takes: {', '.join(sorted(kernel.capabilities)) or 'none'})"
        + f". Kernels that support it: {', '.join(able) or 'none'}.")


def relative_bias_params(module: nn.Module, num_heads: int, head_dim: int, dtype):
  """Transformer-XL's global content bias u and position bias v, each [heads, head_dim]."""
  return tuple(module.param(name, nn.initializers.zeros, (num_heads, head_dim), dtype)
               for name in ("content_bias", "position_bias"))


class MultiHeadAttention(nn.Module):
  """Self- or cross-attention with a kernel chosen by name (or any kernel callable).

  Attributes:
    num_heads: query heads. num_kv_heads: key/value heads (GQA/MQA); default num_heads.
    head_dim: per-head width; default width // num_heads.
    out_features: output width; default the query input's width.
    kernel: a registry name ("dot_product", "flash", "auto", ...) or a kernel callable.
    dropout_rate: dropout on the attention weights (kernels that support it).
    use_bias: biases on Q/K/V (and on the output unless out_bias says otherwise).
    position: "none", "rotary" (on q and k; `rotary_base`, `rope_scaling`), "alibi" (a bias;
      needs a bias-capable kernel) or "relative" (Transformer-XL; needs kernel="relative").
    local_window: each query sees keys within this distance of its diagonal (Mistral's
      sliding window is local_window = sliding_window - 1), in training and in decoding.
    decode: autoregressive decoding with a KV cache in the 'cache' collection. Initialise
      with a full-length input to size the cache; then each call appends its tokens.
    sow_weights: sow the attention weights into 'intermediates' (kernels that return them).
    lora: LoRA adapters on the projections `lora.targets` names (query, key, value, out).
  """
  num_heads: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  out_features: int | None = None
  kernel: str | Callable = "dot_product"
  dropout_rate: float = 0.0
  use_bias: bool = True
  out_bias: bool | None = None  # None: use_bias
  position: str = "none"
  rotary_base: float = 10000.0
  rope_scaling: positional.RopeScaling | None = None
  local_window: int | None = None
  decode: bool = False
  sow_weights: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable = default_kernel_init
  lora: lora_lib.LoraSpec | None = None

  @nn.compact
  def __call__(self, inputs_q, inputs_kv=None, *, mask=None, bias=None, causal=False,
               kv_lengths=None, segment_ids=None, positions=None, relative_biases=None,
               deterministic=True):
    """inputs_q [batch, q_len, width]; inputs_kv [batch, kv_len, width_kv] (default inputs_q).

    mask/bias broadcast to [batch, heads, q_len, kv_len]; see `kernels.dot_product_attention`
    for causal, kv_lengths and segment_ids. `positions` [batch|1, q_len] are the tokens'
    rotary positions (packed or left-padded rows; self-attention), by default counted from
    the bottom-right alignment (or the KV-cache index). `relative_biases` = (u, v), each
    [heads, head_dim], shares Transformer-XL's global biases across layers (default: this
    layer's own).
    Returns [batch, q_len, out_features].
    """
    if self.position not in POSITIONS:
      raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}.")
    kernel = kernels.get(self.kernel)
    if (self.position == "relative") != (kernel.name == "relative"):
      raise ValueError("Transformer-XL relative positions need position='relative' together "
                       f"with kernel='relative' (got position={self.position!r}, "
                       f"kernel={kernel.name!r}).")
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    features = inputs_q.shape[-1]
    kv_heads, head_dim = head_dims(features, self.num_heads, self.num_kv_heads, self.head_dim)

    def project(x, heads, name):
      y = nn.DenseGeneral((heads, head_dim), use_bias=self.use_bias, dtype=self.dtype,
                          param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                          name=name)(x)
      return y + lora_lib.adapter_for(self, self.lora, name, x, 1, (heads, head_dim))

    query = project(inputs_q, self.num_heads, "query")
    key = project(inputs_kv, kv_heads, "key")
    value = project(inputs_kv, kv_heads, "value")

    q_len = query.shape[1]
    if self.decode:
      if kernel.decoding is None:
        raise ValueError(f"attention kernel {kernel.name!r} cannot decode one token at a time; "
                         f"kernels that can: {', '.join(kernels.decoders())}.")
      index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    decoding = self.decode and not self.is_initializing()
    # Position of the first query: the cache index, else bottom-right among the keys.
    q_offset = index.value if decoding else key.shape[1] - q_len
    if self.position == "rotary":  # keys are rotated before they enter the cache
      rotate = functools.partial(positional.apply_rotary, base=self.rotary_base,
                                 scaling=self.rope_scaling)
      if positions is not None and key.shape[1] != q_len:
        raise ValueError("rotary `positions` are for self-attention over the same tokens; "
                         f"got {q_len} queries and {key.shape[1]} keys.")
      key_start = q_offset if decoding else 0
      query = rotate(query, q_offset + jnp.arange(q_len) if positions is None else positions)
      key = rotate(key, key_start + jnp.arange(key.shape[1]) if positions is None
                   else positions)
    if self.decode and kernel.decoding in ("state", "window"):
      if mask is not None or kv_lengths is not None:
        raise ValueError(f"kernel {kernel.name!r} decodes with a {kernel.decoding} cache, which "
                         "takes segment ids, not a dense mask or lengths: pass `segment_ids` "
                         "(e.g. 0 for padding, 1 for real tokens).")
      decode = (self._decode_with_state if kernel.decoding == "state"
                else self._decode_with_window)
      if isinstance(segment_ids, (tuple, list)):  # (new tokens' ids, cache ids): the first
        segment_ids = segment_ids[0]
      out = decode(kernel, query, key, value, index, segment_ids, positions)
      return self._project_out(out, features)
    if self.decode:  # initialising sizes the cache to this input's length
      cache = self._cache(key.shape, value.shape, key.dtype)
    if decoding:
      key, value, cache_mask = self._append_to_cache(key, value, *cache, index)
      mask = cache_mask if mask is None else jnp.logical_and(mask, cache_mask)
      causal = False  # the cache mask is causal already
    kv_len = key.shape[1]
    if self.position == "alibi":
      alibi = positional.alibi_bias(self.num_heads, q_len, kv_len, q_offset)
      bias = alibi if bias is None else bias + alibi

    window = None if decoding else self.local_window  # the cache mask holds it when decoding
    kwargs = dict(mask=mask, bias=bias, kv_lengths=kv_lengths, segment_ids=segment_ids,
                  local_window=window)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if causal:
      kwargs["causal"] = True
    if self.dropout_rate > 0.0 and not deterministic:
      kwargs.update(dropout_rate=self.dropout_rate, dropout_rng=self.make_rng("dropout"))
    if self.sow_weights:
      kwargs["return_weights"] = True
    _check_kernel_takes(kernel, kwargs)
    extra = ()
    if self.position == "relative":
      extra = self._relative_position_args(features, kv_len, head_dim, relative_biases)
    out = kernel(query, key, value, *extra, **kwargs)
    if self.sow_weights:
      out, weights = out
      self.sow("intermediates", "attention_weights", weights)
    return self._project_out(out, features)

  def _project_out(self, out, features):
    """[batch, q_len, heads, head_dim] -> [batch, q_len, out_features]."""
    out_features = self.out_features or features
    out_bias = self.use_bias if self.out_bias is None else self.out_bias
    return nn.DenseGeneral(out_features, axis=(-2, -1), use_bias=out_bias,
                           dtype=self.dtype, param_dtype=self.param_dtype,
                           kernel_init=self.kernel_init, name="out")(out) + lora_lib.adapter_for(
                               self, self.lora, "out", out, 2, (out_features,))

  def _cache(self, key_shape, value_shape, dtype):
    """The KV cache variables: keys, values [batch, max_len, kv_heads, head_dim]."""
    return (self.variable("cache", "cached_key", jnp.zeros, key_shape, dtype),
            self.variable("cache", "cached_value", jnp.zeros, value_shape, dtype))

  def _decode_with_state(self, kernel, query, key, value, index, segment_ids, positions):
    """A recurrent kernel's decoding: the 'cache' holds its fixed-size RecurrentState (no
    keys), continued by every call; O(1) memory per layer in the decoded length."""
    del positions  # rotary positions are already applied
    kwargs = {} if segment_ids is None else {"segment_ids": segment_ids}
    if self.is_initializing():
      out, state = kernel(query, key, value, causal=True, return_state=True, **kwargs)
      self.variable("cache", "recurrent_state", lambda: jax.tree.map(jnp.zeros_like, state))
      return out
    state = self.variable("cache", "recurrent_state", lambda: None)
    out, state.value = kernel(query, key, value, causal=True, state=state.value,
                              return_state=True, **kwargs)
    index.value = index.value + query.shape[1]
    return out

  def _decode_with_window(self, kernel, query, key, value, index, segment_ids, positions):
    """A sliding-window kernel's decoding: a bounded cache of sinks + the last w + 1 keys
    (`caches.window_cache_size`), whatever the length decoded."""
    options = inspect.signature(kernel.fn).parameters
    window = self.local_window if self.local_window is not None else (
        options["local_window"].default)
    left = window if isinstance(window, int) else int(window[0])
    sinks = int(options["sinks"].default)
    batch, n = query.shape[:2]
    if self.is_initializing():
      size = caches.window_cache_size(left, sinks)
      self.variable("cache", "cached_key", jnp.zeros, (batch, size) + key.shape[2:], key.dtype)
      self.variable("cache", "cached_value", jnp.zeros, (batch, size) + value.shape[2:],
                    value.dtype)
      # Positions are stored + 1 so that a zeroed cache (`generation.init_cache`) is empty.
      self.variable("cache", "cached_position", jnp.zeros, (batch, size), jnp.int32)
      self.variable("cache", "cached_segment", jnp.zeros, (batch, size), jnp.int32)
      return kernel(query, key, value, causal=True, local_window=left)
    names = ("cached_key", "cached_value", "cached_position", "cached_segment")
    cache = {name: self.variable("cache", name, lambda: None) for name in names}
    q_seg = jnp.zeros((batch, n), jnp.int32) if segment_ids is None else segment_ids
    q_pos = index.value + jnp.arange(n)[None] if positions is None else positions
    q_pos = jnp.broadcast_to(q_pos, (batch, n)).astype(jnp.int32)
    new = dict(cached_key=key, cached_value=value, cached_position=q_pos + 1,
               cached_segment=q_seg)
    joined = {name: jnp.concatenate([cache[name].value, new[name]], axis=1) for name in names}
    mask = caches.window_mask(q_pos, q_seg, joined["cached_position"] - 1,
                              joined["cached_segment"], left=left, sinks=sinks)
    out = kernels.flash_attention(query, joined["cached_key"], joined["cached_value"],
                                  mask=mask)
    written = caches.write_window({name: cache[name].value for name in names}, new, q_pos,
                                  left=left, sinks=sinks)
    for name in names:
      cache[name].value = written[name]
    index.value = index.value + n
    return out

  def _append_to_cache(self, key, value, cached_key, cached_value, cache_index):
    """Writes the new keys/values at the cache index; returns the whole cache and its mask.

    The cache has the length of the input the module was initialised with; writing past its
    end is the caller's error (`generate` checks lengths before it starts).
    """
    start, new = cache_index.value, key.shape[1]
    cached_key.value = lax.dynamic_update_slice(cached_key.value, key, (0, start, 0, 0))
    cached_value.value = lax.dynamic_update_slice(cached_value.value, value, (0, start, 0, 0))
    cache_index.value = start + new
    q_positions = start + jnp.arange(new)
    max_len = cached_key.value.shape[1]
    distance = q_positions[:, None] - jnp.arange(max_len)[None, :]
    cache_mask = distance >= 0
    if self.local_window is not None:
      cache_mask &= distance <= self.local_window
    return cached_key.value, cached_value.value, cache_mask[None, None]

  def _relative_position_args(self, features, kv_len, head_dim, relative_biases):
    """Transformer-XL's projected sinusoids of distances kv_len-1..0 and biases u, v."""
    sinusoids = positional.sinusoidal_embedding(positional.relative_distances(kv_len), features)
    rel = nn.DenseGeneral((self.num_heads, head_dim), use_bias=False, dtype=self.dtype,
                          param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                          name="position")(sinusoids)
    if relative_biases is not None:
      return (rel, *relative_biases)
    return (rel, *relative_bias_params(self, self.num_heads, head_dim, self.param_dtype))
