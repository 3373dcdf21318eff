"""attention_jax: self-attention kernels, Flax transformer models and a trainer, in JAX."""

__version__ = "0.1.0"
