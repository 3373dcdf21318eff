"""Pure-functional attention kernels (no Flax), written for one head and vmapped.

Layout as `jax.nn.dot_product_attention`: query [batch, q_len, heads, head_dim], key/value
[batch, kv_len, kv_heads, head_dim] with heads % kv_heads == 0; masks (True = may attend) and
biases broadcastable to [batch, heads, q_len, kv_len]. Causal masks are aligned bottom-right.

    from attention_jax import kernels
    out = kernels.get("flash")(q, k, v, causal=True)

Softmax kernels (exact): dot_product, flash, xla, cudnn, splash, pallas_gpu, ring,
sliding_window (a window plus first-token sinks), auto. Linear in length: linear, retention,
performer (an estimate of softmax). Others: additive (Bahdanau), relative (Transformer-XL).
"""

from attention_jax.kernels import masks
from attention_jax.kernels import positional
from attention_jax.kernels.additive import additive_attention, concat_scores
from attention_jax.kernels.dot_product import attention_scores, dot_product_attention
from attention_jax.kernels._recurrent import RecurrentState, empty_state
from attention_jax.kernels.flash import flash_attention
from attention_jax.kernels.linear import linear_attention
from attention_jax.kernels.pallas_gpu import pallas_gpu_attention
from attention_jax.kernels.performer import orthogonal_features, performer_attention
from attention_jax.kernels.registry import (CAPABILITIES, Kernel, auto_attention, choose,
                                            decoders, get, names, register, supporting)
from attention_jax.kernels.relative import gather_relative, rel_shift, relative_attention
from attention_jax.kernels.retention import retention_attention, retnet_decays
from attention_jax.kernels.ring import ring_attention
from attention_jax.kernels.sliding_window import sliding_window_attention
from attention_jax.kernels.splash import splash_attention
from attention_jax.kernels.xla import cudnn_attention, xla_attention

__all__ = [
    "CAPABILITIES", "Kernel", "RecurrentState", "additive_attention", "attention_scores",
    "auto_attention", "choose", "concat_scores", "cudnn_attention", "decoders",
    "dot_product_attention", "empty_state", "flash_attention", "gather_relative", "get",
    "linear_attention", "masks", "names", "orthogonal_features", "pallas_gpu_attention",
    "performer_attention", "positional", "register", "rel_shift", "relative_attention",
    "retention_attention", "retnet_decays", "ring_attention", "sliding_window_attention",
    "splash_attention", "supporting", "xla_attention",
]
