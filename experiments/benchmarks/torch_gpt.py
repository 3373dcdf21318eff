"""The training-step benchmark's PyTorch twin: our quickstart GPT in plain torch.nn (pre-LN,
learned positions, tied embeddings, tanh GELU, SDPA causal attention) with our parameter
count and initialisation. `tests/test_benchmark_smoke.py` checks the count and that it
trains."""

from __future__ import annotations


def torch_gpt(shape: dict):
  """A GPT-2-style torch.nn.Module with our GPT's parameters: tokens [b, t] -> logits."""
  import torch
  from torch import nn
  from torch.nn import functional as F

  width, heads, eps = shape["width"], shape["heads"], shape["ln_eps"]

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.attention_norm = nn.LayerNorm(width, eps=eps)
      self.qkv = nn.Linear(width, 3 * width)  # our query, key and value projections, fused
      self.out = nn.Linear(width, width)
      self.mlp_norm = nn.LayerNorm(width, eps=eps)
      self.fc1 = nn.Linear(width, shape["mlp_dim"])
      self.fc2 = nn.Linear(shape["mlp_dim"], width)

    def forward(self, x):
      b, t, _ = x.shape
      q, k, v = self.qkv(self.attention_norm(x)).view(b, t, 3, heads, -1).permute(2, 0, 3, 1, 4)
      y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
      x = x + self.out(y.transpose(1, 2).reshape(b, t, width))
      return x + self.fc2(F.gelu(self.fc1(self.mlp_norm(x)), approximate="tanh"))

  class GPT(nn.Module):
    def __init__(self):
      super().__init__()
      self.token = nn.Embedding(shape["vocab_size"], width)
      self.position = nn.Embedding(shape["seq_len"], width)
      self.blocks = nn.ModuleList(Block() for _ in range(shape["depth"]))
      self.final_norm = nn.LayerNorm(width, eps=eps)
      for name, p in self.named_parameters():  # as ours: normal(0.02) weights, zero biases
        if p.ndim >= 2:
          nn.init.normal_(p, std=0.02)
        elif name.endswith("bias"):
          nn.init.zeros_(p)

    def forward(self, tokens):
      x = self.token(tokens) + self.position(torch.arange(tokens.shape[1]))
      for block in self.blocks:
        x = block(x)
      return self.final_norm(x) @ self.token.weight.T  # tied output embedding

  return GPT()
