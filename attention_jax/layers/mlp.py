"""Position-wise feed-forward network (MLP), optionally gated (GLU variants)."""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from attention_jax.layers import lora as lora_lib
from attention_jax.layers.attention import default_kernel_init

ACTIVATIONS = {
    "gelu": functools.partial(nn.gelu, approximate=False),  # BERT, ViT
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),  # GPT-2
    "relu": nn.relu,  # Vaswani et al.
    "silu": nn.silu,
}


def activation_fn(name: str) -> Callable:
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}.")
  return ACTIVATIONS[name]


class Mlp(nn.Module):
  """Dense(hidden) -> activation (x gate if gated) -> Dense(out). [..., width] -> [..., out].

  `lora` adds LoRA adapters to fc1 and/or fc2 if its targets name them."""
  hidden_dim: int
  out_dim: int | None = None
  activation: str = "gelu"
  gated: bool = False
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable = default_kernel_init
  lora: lora_lib.LoraSpec | None = None

  @nn.compact
  def __call__(self, x):
    act = activation_fn(self.activation)

    def dense(inputs, features, name):
      y = nn.Dense(features, use_bias=self.use_bias, dtype=self.dtype,
                   param_dtype=self.param_dtype, kernel_init=self.kernel_init, name=name)(inputs)
      return y + lora_lib.adapter_for(self, self.lora, name, inputs, 1, (features,))

    hidden = dense(x, self.hidden_dim, "fc1")
    hidden = act(dense(x, self.hidden_dim, "gate")) * hidden if self.gated else act(hidden)
    return dense(hidden, self.out_dim or x.shape[-1], "fc2")
