from attention_jax.kernels.dot_product import dot_product_attention
from attention_jax.kernels.flash import flash_attention
from attention_jax.kernels import masks
