"""Pure-functional attention kernels (no Flax), written for one head and vmapped.

Layout as `jax.nn.dot_product_attention`: query [batch, q_len, heads, head_dim], key/value
[batch, kv_len, kv_heads, head_dim] with heads % kv_heads == 0; masks (True = may attend) and
biases broadcastable to [batch, heads, q_len, kv_len]. Causal masks are aligned bottom-right.

    from attention_jax import kernels
    out = kernels.get("flash")(q, k, v, causal=True)
"""

from attention_jax.kernels import masks
from attention_jax.kernels import positional
from attention_jax.kernels.additive import additive_attention, concat_scores
from attention_jax.kernels.dot_product import attention_scores, dot_product_attention
from attention_jax.kernels.flash import flash_attention
from attention_jax.kernels.pallas_gpu import pallas_gpu_attention
from attention_jax.kernels.registry import (Kernel, auto_attention, choose, get, names,
                                            register, supporting)
from attention_jax.kernels.relative import gather_relative, rel_shift, relative_attention
from attention_jax.kernels.ring import ring_attention
from attention_jax.kernels.splash import splash_attention
from attention_jax.kernels.xla import cudnn_attention, xla_attention

__all__ = [
    "Kernel", "additive_attention", "attention_scores", "auto_attention", "choose", "concat_scores",
    "cudnn_attention", "dot_product_attention", "flash_attention", "gather_relative", "get",
    "masks", "names", "pallas_gpu_attention", "positional", "register", "rel_shift",
    "relative_attention", "ring_attention", "splash_attention", "supporting", "xla_attention",
]
