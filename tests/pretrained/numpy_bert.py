"""An independent plain-numpy (float64) BERT forward pass over Hugging Face tensor names, the
reference our Flax Bert must match on real pretrained weights."""

import math

import numpy as np

_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(x):
  return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def layer_norm(x, weight, bias, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * weight + bias


def softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def bert_hidden(tensors, config, input_ids, attention_mask, token_type_ids):
  """Last hidden states [batch, length, hidden] of BertModel, as transformers computes them."""
  t = {k: np.asarray(v, np.float64) for k, v in tensors.items() if v.dtype.kind == "f"}
  eps = config["layer_norm_eps"]
  heads = config["num_attention_heads"]
  batch, length = input_ids.shape
  h = (t["embeddings.word_embeddings.weight"][input_ids]
       + t["embeddings.position_embeddings.weight"][np.arange(length)][None]
       + t["embeddings.token_type_embeddings.weight"][token_type_ids])
  h = layer_norm(h, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"], eps)
  head_dim = h.shape[-1] // heads
  additive = (1.0 - attention_mask[:, None, None, :]) * -1e30

  def linear(x, name):
    return x @ t[name + ".weight"].T + t[name + ".bias"]

  def split(x):
    return x.reshape(batch, length, heads, head_dim).transpose(0, 2, 1, 3)

  for i in range(config["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    q, k, v = (split(linear(h, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
    probs = softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + additive)
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, -1)
    h = layer_norm(h + linear(context, p + "attention.output.dense"),
                   t[p + "attention.output.LayerNorm.weight"],
                   t[p + "attention.output.LayerNorm.bias"], eps)
    inner = gelu(linear(h, p + "intermediate.dense"))
    h = layer_norm(h + linear(inner, p + "output.dense"), t[p + "output.LayerNorm.weight"],
                   t[p + "output.LayerNorm.bias"], eps)
  return h
