"""Multi-head latent attention (MLA; DeepSeek-V2, arXiv:2405.04434, and V3) on the registry's
kernels.

Keys and values come from one compressed latent per token, c = norm(x W_down) [rank]: head
h's key is [c W_uk_h, k_rope] and its value c W_uv_h, where k_rope (qk_rope_head_dim wide,
rotary) is one for all heads; queries are [q_nope_h, q_rope_h], from x directly or from a
low-rank latent of their own (q_lora_rank). One function, two computations:

  materialised (training, prefill, `mla_decode="materialised"`): each head's keys and values
    are formed and any kernel attends over them (value head_dim v_head_dim; the registry pads
    it for the kernels that need equal head dims);
  absorbed (`mla_decode="absorbed"` decoding): W_uk folds into the query (q_nope_h W_uk_h^T,
    rank wide) and W_uv into the output, so the cache holds only [c, k_rope] per token,
    kv_lora_rank + qk_rope_head_dim numbers (576 for DeepSeek-V3), attended as one shared
    key/value head. The scores are the same numbers, summed in another order.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from attention_jax import kernels
from attention_jax.kernels import positional
from attention_jax.layers import caches
from attention_jax.layers import lora as lora_lib
from attention_jax.layers.attention import MultiHeadAttention
from attention_jax.layers.inputs import AttentionInputs
from attention_jax.layers.norms import make_norm

LATENT_NORM_EPS = 1e-6  # DeepSeek's q_a_layernorm and kv_a_layernorm (not rms_norm_eps)


class _UpProjection(nn.Module):
  """The latent's up-projection kernel [rank, heads, qk_nope_head_dim + v_head_dim], used
  whole (materialised) or folded into the query and output (absorbed)."""
  shape: tuple[int, int, int]
  kernel_init: object
  dtype: object
  param_dtype: object

  @nn.compact
  def __call__(self):
    return self.param("kernel", self.kernel_init, self.shape, self.param_dtype).astype(
        self.dtype)


class LatentAttention(MultiHeadAttention):
  """Self-attention through a compressed key/value latent (see the module docstring).

  Attributes (beside MultiHeadAttention's; `position` must be "rotary", on the rope parts):
    kv_lora_rank, q_lora_rank (None: a full query projection 'query'), qk_nope_head_dim,
    qk_rope_head_dim, v_head_dim: as `TransformerConfig`.
    absorbed_decode: with `decode`, cache the latent and fold the up-projections (True) or
      cache each head's keys and values (False).
  Parameters: query [width, heads, qk_head_dim] or query_down [width, q_lora_rank],
  query_down_norm, query_up [q_lora_rank, heads, qk_head_dim]; kv_down [width, kv_lora_rank +
  qk_rope_head_dim], kv_down_norm [kv_lora_rank], kv_up [kv_lora_rank, heads,
  qk_nope_head_dim + v_head_dim]; out [heads, v_head_dim, width]. `use_bias` puts biases on
  query_down, kv_down (and `out_bias` on out), as DeepSeek's attention_bias does.
  """
  kv_lora_rank: int = 0
  q_lora_rank: int | None = None
  qk_nope_head_dim: int = 0
  qk_rope_head_dim: int = 0
  v_head_dim: int = 0
  absorbed_decode: bool = True

  def softmax_scale(self) -> float:
    """qk_head_dim ** -0.5 (or `scale`), times YaRN's mscale(factor, mscale_all_dim)² where
    the rope scaling sets mscale_all_dim (DeepSeek)."""
    scale = (self.qk_nope_head_dim + self.qk_rope_head_dim) ** -0.5 if self.scale is None else (
        self.scale)
    r = self.rope_scaling
    if r is not None and r.kind == "yarn" and r.mscale_all_dim:
      scale *= positional.yarn_mscale(r.factor, r.mscale_all_dim) ** 2
    return scale

  @nn.compact
  def __call__(self, inputs_q, inputs_kv=None, inputs: AttentionInputs | None = None, *,
               relative_biases=None, deterministic=True):
    """inputs_q [batch, q_len, width]; inputs_kv (default inputs_q) the same tokens, with
    any memory before them; `inputs` as MultiHeadAttention's. -> [batch, q_len, width]."""
    del relative_biases  # Transformer-XL's; MLA has rotary positions
    inputs = AttentionInputs() if inputs is None else inputs
    if self.position != "rotary":
      raise ValueError(f"multi-head latent attention has rotary positions, got "
                       f"position={self.position!r}.")
    if self.lora is not None and {"key", "value"} & set(self.lora.targets):
      raise ValueError(f"LoRA targets {self.lora.targets} name key/value projections, which "
                       "multi-head latent attention does not have (kv_up makes both from the "
                       "latent); target 'query' and 'out' here.")
    kernel = self._checked_kernel()
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    features = inputs_q.shape[-1]
    heads, nope, rope, rank = (self.num_heads, self.qk_nope_head_dim, self.qk_rope_head_dim,
                               self.kv_lora_rank)
    dense = functools.partial(nn.DenseGeneral, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=self.kernel_init)
    norm = functools.partial(make_norm, "rms", epsilon=LATENT_NORM_EPS, dtype=self.dtype,
                             param_dtype=self.param_dtype)

    # Queries [batch, q_len, heads, nope + rope], from x or through their own latent.
    query_shape = (heads, nope + rope)
    if self.q_lora_rank is None:
      source, name = inputs_q, "query"
    else:
      down = dense(self.q_lora_rank, use_bias=self.use_bias, name="query_down")(inputs_q)
      source, name = norm(name="query_down_norm")(down), "query_up"
    query = dense(query_shape, use_bias=False, name=name)(source) + lora_lib.adapter_for(
        self, self.lora, "query", source, 1, query_shape, name=name)
    # The latent [batch, kv_len, rank] and the shared rotary key [batch, kv_len, 1, rope].
    compressed = dense(rank + rope, use_bias=self.use_bias, name="kv_down")(inputs_kv)
    latent = norm(name="kv_down_norm")(compressed[..., :rank])
    key_rope = compressed[..., None, rank:]
    up = _UpProjection((rank, heads, nope + self.v_head_dim), self.kernel_init, self.dtype,
                       self.param_dtype, name="kv_up")()

    index = self._cache_index(kernel)
    decoding = self.decode and not self.is_initializing()
    q_offset = index.value if decoding else inputs_kv.shape[1] - inputs_q.shape[1]
    query_nope, query_rope = query[..., :nope], query[..., nope:]
    query_rope, key_rope = self._rotate(query_rope, key_rope, inputs.positions, q_offset,
                                        decoding)
    attend = functools.partial(self._attend, kernel=kernel, q_offset=q_offset,
                               features=features, relative_biases=None,
                               deterministic=deterministic)

    def materialised(cached: bool):
      kv = jnp.einsum("btr,rhd->bthd", latent, up)
      key = jnp.concatenate(
          [kv[..., :nope], jnp.broadcast_to(key_rope, kv.shape[:3] + (rope,))], axis=-1)
      query_full = jnp.concatenate([query_nope, query_rope], axis=-1)
      value = kv[..., nope:]
      if cached:
        return caches.for_kernel(kernel, self, index)(query_full, key, value, inputs, attend)
      return attend(query_full, key, value, inputs, None)

    if not (self.decode and self.absorbed_decode):
      return self._project_out(materialised(self.decode), features)
    latent_key = jnp.concatenate([latent[:, :, None, :], key_rope], axis=-1)
    cached, cache_inputs = caches.KVCache(self, kernel, index).append(
        {"cached_latent": latent_key}, inputs)
    if cached is None:  # initialising: the parameters are the same either way
      return self._project_out(materialised(False), features)
    keys = cached["cached_latent"]  # [batch, cache_len, 1, rank + rope]
    absorbed_query = jnp.concatenate(
        [jnp.einsum("bqhn,rhn->bqhr", query_nope, up[..., :nope]), query_rope], axis=-1)
    out = attend(absorbed_query, keys, keys[..., :rank], cache_inputs, None)
    return self._project_out(jnp.einsum("bqhr,rhv->bqhv", out, up[..., nope:]), features)
