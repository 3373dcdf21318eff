"""attention_jax: self-attention kernels, Flax transformer models and a trainer, in JAX."""

from attention_jax import allocator as _allocator

__version__ = "0.1.0"

# Before JAX starts its threads: keep XLA:CPU's step memory in the heap (see allocator.py).
_allocator.tune()
