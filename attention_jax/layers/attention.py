"""Multi-head attention: Q/K/V/output projections around any kernel from the registry."""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from attention_jax import kernels
from attention_jax.kernels import positional
from attention_jax.layers import caches
from attention_jax.layers import lora as lora_lib
from attention_jax.layers.inputs import AttentionInputs
from attention_jax.layers.norms import make_norm

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
    "logits_soft_cap": "soft-capped attention logits (attn_logits_soft_cap, Gemma 2)",
    "sinks": "learned attention sinks (learned_sinks, GPT-OSS)",
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
    use_bias: biases on Q/K/V (and on the output unless out_bias says otherwise; on the keys
      unless key_bias says otherwise).
    position: "none", "rotary" (on q and k; `rotary_base`, `rope_scaling`), "alibi" (a bias;
      needs a bias-capable kernel) or "relative" (Transformer-XL; needs kernel="relative").
    local_window: each query sees keys within this distance of its diagonal (Mistral's
      sliding window is local_window = sliding_window - 1), in training and in decoding.
    decode: autoregressive decoding with the cache the kernel's `decoding` names
      (`layers.caches`) in the 'cache' collection. Initialise with a full-length input to
      size a KV cache; then each call appends its tokens.
    cache_kv: cross-attention while decoding: the call that passes inputs_kv (the encoder
      output; the prompt's call) projects its keys and values into the 'cache' collection
      ('cross_key', 'cross_value'), and calls with inputs_kv=None read them there, instead of
      projecting the same encoder output again at every step.
    sow_weights: sow the attention weights into 'intermediates' (kernels that return them).
    logits_soft_cap: c caps the scores, c·tanh(score / c), in the kernel (Gemma 2).
    scale: the scores' scale; default head_dim ** -0.5 (Gemma: query_pre_attn_scalar ** -0.5).
    qk_norm: None, or a norm kind ("rms", "layer") applied to each head's queries and keys
      (over head_dim; parameters 'query_norm', 'key_norm' [head_dim]) before the rotary
      embedding and the cache (Qwen3, Gemma 3); norm_eps its epsilon.
    learned_sinks: a learned logit per head (parameter 'sinks' [heads], zeros at init) in
      every row's softmax denominator (GPT-OSS), passed to the kernel as `sinks`.
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
  key_bias: bool | None = None  # None: use_bias (Whisper's keys have none)
  position: str = "none"
  rotary_base: float = 10000.0
  rope_scaling: positional.RopeScaling | None = None
  local_window: int | None = None
  decode: bool = False
  cache_kv: bool = False
  sow_weights: bool = False
  logits_soft_cap: float | None = None
  scale: float | None = None
  learned_sinks: bool = False
  qk_norm: str | None = None
  norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable = default_kernel_init
  lora: lora_lib.LoraSpec | None = None

  @nn.compact
  def __call__(self, inputs_q, inputs_kv=None, inputs: AttentionInputs | None = None, *,
               relative_biases=None, deterministic=True):
    """inputs_q [batch, q_len, width]; inputs_kv [batch, kv_len, width_kv] (default inputs_q);
    `inputs` the masks, lengths, segments and positions (`AttentionInputs`; rotary positions
    are for self-attention). `relative_biases` = (u, v), each [heads, head_dim], shares
    Transformer-XL's global biases across layers (default: this layer's own).
    Returns [batch, q_len, out_features].
    """
    inputs = AttentionInputs() if inputs is None else inputs
    kernel = self._checked_kernel()
    features = inputs_q.shape[-1]
    kv_heads, head_dim = head_dims(features, self.num_heads, self.num_kv_heads, self.head_dim)

    def project(x, heads, name):
      bias = self.use_bias if name != "key" or self.key_bias is None else self.key_bias
      y = nn.DenseGeneral((heads, head_dim), use_bias=bias, dtype=self.dtype,
                          param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                          name=name)(x)
      return y + lora_lib.adapter_for(self, self.lora, name, x, 1, (heads, head_dim))

    query = project(inputs_q, self.num_heads, "query")
    if self.cache_kv and inputs_kv is None:  # a later decoding step of cross-attention
      key, value = self._cached_keys_values()
    else:
      inputs_kv = inputs_q if inputs_kv is None else inputs_kv
      key = project(inputs_kv, kv_heads, "key")
      value = project(inputs_kv, kv_heads, "value")
      if self.cache_kv:
        self.put_variable("cache", "cross_key", key)
        self.put_variable("cache", "cross_value", value)
    if self.qk_norm is not None:
      norm = functools.partial(make_norm, self.qk_norm, epsilon=self.norm_eps,
                               dtype=self.dtype, param_dtype=self.param_dtype)
      query, key = norm(name="query_norm")(query), norm(name="key_norm")(key)
    index = self._cache_index(kernel)
    decoding = self.decode and not self.is_initializing()
    # Position of the first query: the cache index, else bottom-right among the keys.
    q_offset = index.value if decoding else key.shape[1] - query.shape[1]
    if self.position == "rotary":  # keys are rotated before they enter a cache
      query, key = self._rotate(query, key, inputs.positions, q_offset, decoding)
    attend = functools.partial(self._attend, kernel=kernel, q_offset=q_offset,
                               features=features,
                               relative_biases=relative_biases, deterministic=deterministic)
    if self.decode:
      out = caches.for_kernel(kernel, self, index)(query, key, value, inputs, attend)
    else:
      out = attend(query, key, value, inputs, self.local_window)
    return self._project_out(out, features)

  def _cached_keys_values(self):
    """The keys and values the first decoding call of a `cache_kv` layer projected."""
    if not self.has_variable("cache", "cross_key"):
      raise ValueError("this cross-attention reads the keys and values its first decoding "
                       "call projected; pass the encoder output on the first call (the "
                       "prompt's), then None.")
    return (self.get_variable("cache", "cross_key"),
            self.get_variable("cache", "cross_value"))

  def _checked_kernel(self):
    """The layer's kernel, checked against the layer's options."""
    if self.position not in POSITIONS:
      raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}.")
    kernel = kernels.get(self.kernel)
    if (self.position == "relative") != (kernel.name == "relative"):
      raise ValueError("Transformer-XL relative positions need position='relative' together "
                       f"with kernel='relative' (got position={self.position!r}, "
                       f"kernel={kernel.name!r}).")
    needs = {"logits_soft_cap": self.logits_soft_cap, "sinks": self.learned_sinks or None}
    # Every path (the decoding caches too) needs these.
    _check_kernel_takes(kernel, {name: v for name, v in needs.items() if v is not None})
    return kernel

  def _cache_index(self, kernel):
    """The 'cache_index' variable when decoding (None otherwise)."""
    if not self.decode:
      return None
    if kernel.decoding is None:
      raise ValueError(f"attention kernel {kernel.name!r} cannot decode one token at a time; "
                       f"kernels that can: {', '.join(kernels.decoders())}.")
    return self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))

  def softmax_scale(self) -> float | None:
    """The scores' scale (None: the kernel's default, head_dim ** -0.5)."""
    return self.scale

  def _rotate(self, query, key, positions, q_offset, decoding):
    """Rotary embeddings of the queries and keys at `positions` (default: counted from
    q_offset for the queries, from the cache index or 0 for the keys)."""
    q_len, kv_len = query.shape[1], key.shape[1]
    if positions is not None and kv_len != q_len:
      raise ValueError("rotary `positions` are for self-attention over the same tokens; "
                       f"got {q_len} queries and {kv_len} keys.")
    rotate = functools.partial(positional.apply_rotary, base=self.rotary_base,
                               scaling=self.rope_scaling)
    key_start = q_offset if decoding else 0
    return (rotate(query, q_offset + jnp.arange(q_len) if positions is None else positions),
            rotate(key, key_start + jnp.arange(kv_len) if positions is None else positions))

  def _attend(self, query, key, value, inputs: AttentionInputs, local_window, *, kernel,
              q_offset, features, relative_biases, deterministic):
    """The kernel over [batch, len, heads, head_dim] queries, keys and values with `inputs`,
    ALiBi or Transformer-XL's positions, sinks, soft-capping, the scale, dropout and sown
    weights as configured. A cache may pass its own `kernel`."""
    bias = inputs.bias
    if self.position == "alibi":
      alibi = positional.alibi_bias(self.num_heads, query.shape[1], key.shape[1], q_offset)
      bias = alibi if bias is None else bias + alibi
    sinks = None
    if self.learned_sinks:
      sinks = self.param("sinks", nn.initializers.zeros, (self.num_heads,), self.param_dtype)
    kwargs = dict(mask=inputs.mask, bias=bias, kv_lengths=inputs.kv_lengths,
                  segment_ids=inputs.segment_ids, local_window=local_window,
                  logits_soft_cap=self.logits_soft_cap, sinks=sinks,
                  scale=self.softmax_scale())
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if inputs.causal:
      kwargs["causal"] = True
    if self.dropout_rate > 0.0 and not deterministic:
      kwargs.update(dropout_rate=self.dropout_rate, dropout_rng=self.make_rng("dropout"))
    if self.sow_weights:
      kwargs["return_weights"] = True
    _check_kernel_takes(kernel, kwargs)
    extra = ()
    if self.position == "relative":
      head_dim = query.shape[-1]
      extra = self._relative_position_args(features, key.shape[1], head_dim, relative_biases)
    out = kernel(query, key, value, *extra, **kwargs)
    if self.sow_weights:
      out, weights = out
      self.sow("intermediates", "attention_weights", weights)
    return out

  def _project_out(self, out, features):
    """[batch, q_len, heads, head_dim] -> [batch, q_len, out_features]."""
    out_features = self.out_features or features
    out_bias = self.use_bias if self.out_bias is None else self.out_bias
    return nn.DenseGeneral(out_features, axis=(-2, -1), use_bias=out_bias,
                           dtype=self.dtype, param_dtype=self.param_dtype,
                           kernel_init=self.kernel_init, name="out")(out) + lora_lib.adapter_for(
                               self, self.lora, "out", out, 2, (out_features,))

  def _relative_position_args(self, features, kv_len, head_dim, relative_biases):
    """Transformer-XL's projected sinusoids of distances kv_len-1..0 and biases u, v."""
    sinusoids = positional.sinusoidal_embedding(positional.relative_distances(kv_len), features)
    rel = nn.DenseGeneral((self.num_heads, head_dim), use_bias=False, dtype=self.dtype,
                          param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                          name="position")(sinusoids)
    if relative_biases is not None:
      return (rel, *relative_biases)
    return (rel, *relative_bias_params(self, self.num_heads, head_dim, self.param_dtype))
