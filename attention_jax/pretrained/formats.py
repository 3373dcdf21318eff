"""The Hugging Face formats: config.json <-> our model config, and tensor rules.

BERT: `BertModel` names (`embeddings.*`, `encoder.layer.N.*`, `pooler.dense.*`), plus
`cls.predictions.*` (the MLM head) and `classifier.*` when the model has them; a `bert.`
prefix (BertFor* checkpoints), old `LayerNorm.gamma/beta` names and a missing pooler (BertFor
MaskedLM, TokenClassification, QuestionAnswering; it then starts fresh) are accepted on load.
A classifier over mean-pooled tokens is recorded as `"classifier_pooling": "mean"` in
config.json, which our loader reads and transformers ignores (it classifies from the pooler).

GPT-2: `GPT2Model` names (`wte`, `wpe`, `h.N.*`, `ln_f`), Conv1D weights stored [in, out],
q/k/v fused in `c_attn`; a `transformer.` prefix and the tied `lm_head.weight` are accepted.

Llama, Mistral, Qwen2, Qwen3 (`*ForCausalLM`): `model.embed_tokens`, `model.layers.N.
self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj` (our gate, fc1, fc2), `input_layernorm`,
`post_attention_layernorm`, `model.norm`, `lm_head` (absent when tied); Qwen3's QK-norm
weights `self_attn.{q,k}_norm` (our query_norm, key_norm). Rotary settings are
read from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling` (4.x); both
are written.

Gemma 2 and Gemma 3 text (`Gemma2ForCausalLM`, `Gemma3ForCausalLM`): the Llama names, with
four norms per layer (`input_layernorm`, `post_attention_layernorm`,
`pre_feedforward_layernorm`, `post_feedforward_layernorm`: our attention_norm,
attention_post_norm, mlp_norm, mlp_post_norm), stored as Gemma stores them (the weight
1 + w); `layer_types` ("sliding_attention"/"full_attention", or 4.x's pattern), and Gemma 3's
two rotary bases (`rope_parameters` per layer type, or 4.x's `rope_theta` +
`rope_local_base_freq` + `rope_scaling`).

DeepSeek-V2 and V3 with dense MLPs (`DeepseekV2ForCausalLM`, `DeepseekV3ForCausalLM`): the
Llama names with latent attention's `self_attn.q_proj` (or `q_a_proj`, `q_a_layernorm`,
`q_b_proj`), `kv_a_proj_with_mqa`, `kv_a_layernorm`, `kv_b_proj`, `o_proj` (our query or
query_down, query_down_norm, query_up; kv_down, kv_down_norm, kv_up; out). DeepSeek stores
each rotary part in interleaved pairs (V2 always, V3 unless rope_interleave is false); the
rows are reordered to our rotate-half layout on load and back on export.
"""

from __future__ import annotations

import functools

import numpy as np

from attention_jax.kernels.positional import RopeScaling
from attention_jax.layers import moe
from attention_jax.models import GPT, Bert, Deepseek, Gemma, Llama, Mixtral
from attention_jax.models.gemma import gemma_layer_types
from attention_jax.pretrained import convert
from attention_jax.pretrained.convert import (bias_to_heads, fused_to_heads, heads_to_linear,
                                              linear, linear_to_heads, same)
from attention_jax.pretrained.json_file import JsonObject
from attention_jax.pretrained.whisper_format import WhisperFormat

# HF activation names <-> ours (HF "gelu" is the exact erf GELU; "gelu_new" the tanh one).
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "relu": "relu", "silu": "silu", "swish": "silu"}
_HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def _activation(config: JsonObject, field: str, default: str) -> str:
  name = config.string(field, default)
  if name not in _ACTIVATIONS:
    raise ValueError(f"{config.source}: activation {field}={name!r} is not supported; "
                     f"supported: {', '.join(sorted(_ACTIVATIONS))}.")
  return _ACTIVATIONS[name]


def _probability(config: JsonObject, field: str, default: float) -> float:
  return config.number(field, default, at_most=1.0)


_layer_norm, _dense = convert.layer_norm, convert.dense


class BertFormat:
  family = Bert
  model_type = "bert"
  prefix = "bert."
  # A buffer, the NSP head, and the MLM decoder (tied to the word embeddings).
  ignore = ("embeddings.position_ids", "cls.seq_relationship.*", "cls.predictions.decoder.*")

  @staticmethod
  def fields(config: JsonObject, tensors) -> dict:
    position = config.string("position_embedding_type", "absolute")
    if position != "absolute":
      raise ValueError(f"{config.source}: only BERT checkpoints with absolute position "
                       f"embeddings are supported, got position_embedding_type={position!r}.")
    fields = dict(vocab_size=config.integer("vocab_size", minimum=1),
                  max_len=config.integer("max_position_embeddings", minimum=1),
                  type_vocab_size=config.integer("type_vocab_size", 2, minimum=1),
                  width=config.integer("hidden_size", minimum=1),
                  depth=config.integer("num_hidden_layers", minimum=1),
                  num_heads=config.integer("num_attention_heads", minimum=1),
                  mlp_dim=config.integer("intermediate_size", minimum=1),
                  dropout_rate=_probability(config, "hidden_dropout_prob", 0.1),
                  attention_dropout_rate=_probability(config, "attention_probs_dropout_prob",
                                                      0.1),
                  ln_eps=config.number("layer_norm_eps", 1e-12, positive=True),
                  activation=_activation(config, "hidden_act", "gelu"))
    if "classifier.weight" in tensors:
      fields["num_classes"] = int(tensors["classifier.weight"].shape[0])
      pooling = config.string("classifier_pooling", "cls")
      if pooling not in ("cls", "mean"):
        raise ValueError(f"{config.source}: classifier_pooling={pooling!r}, expected "
                         "'cls' or 'mean'.")
      fields["classifier_pooling"] = pooling
    return fields

  @staticmethod
  def rename(name: str) -> str:
    """Old TensorFlow-port names: LayerNorm.gamma/beta -> weight/bias."""
    for old, current in ((".LayerNorm.gamma", ".LayerNorm.weight"),
                         (".LayerNorm.beta", ".LayerNorm.bias")):
      if name.endswith(old):
        return name[:-len(old)] + current
    return name

  @staticmethod
  def config(model: Bert) -> dict:
    c = model.config
    config = {"architectures": ["BertForSequenceClassification" if c.num_classes
                                else "BertModel"],
              "model_type": "bert", "vocab_size": c.vocab_size,
              "max_position_embeddings": c.max_len,
              "type_vocab_size": c.type_vocab_size, "hidden_size": c.width,
              "num_hidden_layers": c.depth, "num_attention_heads": c.num_heads,
              "intermediate_size": c.mlp_dim, "hidden_dropout_prob": c.dropout_rate,
              "attention_probs_dropout_prob": c.attention_dropout_rate,
              "layer_norm_eps": c.ln_eps, "hidden_act": _HF_ACTIVATION[c.activation],
              "position_embedding_type": "absolute", "pad_token_id": 0,
              "initializer_range": 0.02}
    if c.num_classes:
      config["num_labels"] = c.num_classes
      config["classifier_pooling"] = c.classifier_pooling
      config["id2label"] = {str(i): f"LABEL_{i}" for i in range(c.num_classes)}
      config["label2id"] = {f"LABEL_{i}": i for i in range(c.num_classes)}
    return config

  @staticmethod
  def rules(model: Bert, with_mlm_head: bool, with_pooler: bool = True,
            hf_config: JsonObject | None = None) -> list[convert.Rule]:
    c = model.config
    heads, head_dim = c.num_heads, c.width // c.num_heads
    rules = [same("embeddings.word_embeddings.weight", ("embed", "token", "embedding")),
             same("embeddings.position_embeddings.weight", ("embed", "position", "embedding")),
             same("embeddings.token_type_embeddings.weight",
                  ("embed", "token_type", "embedding")),
             *_layer_norm("embeddings.LayerNorm", ("embed", "norm"))]
    if with_pooler:
      rules += _dense("pooler.dense", ("pooler",))
    for i in range(c.depth):
      hf, ours = f"encoder.layer.{i}.", (f"blocks_{i}",)
      attention = ours + ("attention",)
      for name in ("query", "key", "value"):
        rules += [linear_to_heads(hf + f"attention.self.{name}.weight",
                                  attention + (name, "kernel"), heads, head_dim),
                  bias_to_heads(hf + f"attention.self.{name}.bias", attention + (name, "bias"),
                                heads, head_dim)]
      rules += [heads_to_linear(hf + "attention.output.dense.weight",
                                attention + ("out", "kernel"), heads, head_dim),
                same(hf + "attention.output.dense.bias", attention + ("out", "bias")),
                *_layer_norm(hf + "attention.output.LayerNorm", ours + ("attention_norm",)),
                *_dense(hf + "intermediate.dense", ours + ("mlp", "fc1")),
                *_dense(hf + "output.dense", ours + ("mlp", "fc2")),
                *_layer_norm(hf + "output.LayerNorm", ours + ("mlp_norm",))]
    if with_mlm_head:  # the decoder weight is tied to the word embeddings
      rules += [*_dense("cls.predictions.transform.dense", ("mlm_head", "dense")),
                *_layer_norm("cls.predictions.transform.LayerNorm", ("mlm_head", "norm")),
                same("cls.predictions.bias", ("mlm_bias", "bias"))]
    if c.num_classes:
      rules += _dense("classifier", ("classifier",))
    return rules


class Gpt2Format:
  family = GPT
  model_type = "gpt2"
  prefix = "transformer."
  ignore = ("h.*.attn.bias", "h.*.attn.masked_bias", "lm_head.weight")  # buffers; tied head

  @staticmethod
  def fields(config: JsonObject, tensors) -> dict:
    width = config.integer("n_embd", minimum=1)
    return dict(vocab_size=config.integer("vocab_size", minimum=1),
                max_len=config.integer("n_positions", minimum=1), width=width,
                depth=config.integer("n_layer", minimum=1),
                num_heads=config.integer("n_head", minimum=1),
                mlp_dim=config.integer("n_inner", 4 * width, minimum=1),
                dropout_rate=_probability(config, "resid_pdrop", 0.1),
                attention_dropout_rate=_probability(config, "attn_pdrop", 0.1),
                ln_eps=config.number("layer_norm_epsilon", 1e-5, positive=True),
                activation=_activation(config, "activation_function", "gelu_new"))

  @staticmethod
  def config(model: GPT) -> dict:
    c = model.config
    if c.position != "learned" or c.num_kv_heads not in (None, c.num_heads):
      raise ValueError("the GPT-2 format holds learned positions and full multi-head "
                       f"attention; this GPT has position={c.position!r}, "
                       f"num_kv_heads={c.num_kv_heads}.")
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": c.vocab_size, "n_positions": c.max_len,
            "n_ctx": c.max_len, "n_embd": c.width, "n_layer": c.depth,
            "n_head": c.num_heads, "n_inner": c.mlp_dim,
            "activation_function": _HF_ACTIVATION[c.activation],
            "resid_pdrop": c.dropout_rate, "embd_pdrop": c.dropout_rate,
            "attn_pdrop": c.attention_dropout_rate, "layer_norm_epsilon": c.ln_eps,
            "tie_word_embeddings": True, "initializer_range": 0.02}

  @staticmethod
  def rename(name: str) -> str:
    return name

  @staticmethod
  def rules(model: GPT, with_mlm_head: bool = False, with_pooler: bool = False,
            hf_config: JsonObject | None = None) -> list[convert.Rule]:
    c = model.config
    heads, head_dim = c.num_heads, c.width // c.num_heads
    rules = [same("wte.weight", ("embed", "token", "embedding")),
             same("wpe.weight", ("embed", "position", "embedding")),
             *_layer_norm("ln_f", ("final_norm",))]
    for i in range(c.depth):
      hf, ours = f"h.{i}.", (f"block_{i}",)
      attention = ours + ("attention",)
      qkv = tuple(attention + (name,) for name in ("query", "key", "value"))
      rules += [fused_to_heads(hf + "attn.c_attn.weight", tuple(p + ("kernel",) for p in qkv),
                               heads, head_dim),
                fused_to_heads(hf + "attn.c_attn.bias", tuple(p + ("bias",) for p in qkv),
                               heads, head_dim),
                heads_to_linear(hf + "attn.c_proj.weight", attention + ("out", "kernel"),
                                heads, head_dim, transposed=False),
                same(hf + "attn.c_proj.bias", attention + ("out", "bias")),
                *_layer_norm(hf + "ln_1", ours + ("attention_norm",)),
                *_layer_norm(hf + "ln_2", ours + ("mlp_norm",)),
                same(hf + "mlp.c_fc.weight", ours + ("mlp", "fc1", "kernel")),
                same(hf + "mlp.c_fc.bias", ours + ("mlp", "fc1", "bias")),
                same(hf + "mlp.c_proj.weight", ours + ("mlp", "fc2", "kernel")),
                same(hf + "mlp.c_proj.bias", ours + ("mlp", "fc2", "bias"))]
    return rules


def _rope(config: JsonObject) -> tuple[float, RopeScaling | None]:
  """(rotary base, scaling) from a Llama-family config.json of either transformers major."""
  parameters, legacy = config.object("rope_parameters"), config.object("rope_scaling")
  theta = parameters.number("rope_theta", config.number("rope_theta", 10000.0, positive=True),
                            positive=True)
  scaling = parameters if parameters.string("rope_type", None) else legacy
  kind = scaling.string("rope_type", None) or scaling.string("type", "default")
  if kind == "default":
    return theta, None
  if kind == "yarn":
    original = scaling.integer("original_max_position_embeddings",
                               config.integer("max_position_embeddings", 8192, minimum=1),
                               minimum=1)
    factor = scaling.number("factor", None, positive=True)
    if factor is None:  # DeepSeek-V3's rule: the ratio of the two lengths
      factor = config.integer("max_position_embeddings", minimum=1) / original
    optional = lambda name: scaling.number(name, None, positive=True)
    return theta, RopeScaling(
        "yarn", factor, original_max_len=original, beta_fast=optional("beta_fast") or 32.0,
        beta_slow=optional("beta_slow") or 1.0, mscale=scaling.number("mscale", None),
        mscale_all_dim=scaling.number("mscale_all_dim", None),
        attention_factor=optional("attention_factor"),
        truncate=scaling.boolean("truncate", True))
  factor = scaling.number("factor", positive=True)
  if kind == "linear":
    return theta, RopeScaling("linear", factor)
  if kind == "llama3":
    return theta, RopeScaling(
        "llama3", factor, scaling.number("low_freq_factor", positive=True),
        scaling.number("high_freq_factor", positive=True),
        scaling.integer("original_max_position_embeddings", minimum=1))
  raise ValueError(f"{scaling.source}: rope type {kind!r} is not supported; supported: "
                   "default, linear, llama3, yarn.")


def _rope_config(c) -> dict:
  """config.json's rotary fields, in transformers 5's form and 4.x's."""
  parameters = {"rope_type": "default", "rope_theta": c.rotary_base}
  if c.rope_scaling is not None:
    r = c.rope_scaling
    parameters.update(rope_type=r.kind, factor=r.factor)
    if r.kind == "llama3":
      parameters.update(low_freq_factor=r.low_freq_factor, high_freq_factor=r.high_freq_factor,
                        original_max_position_embeddings=r.original_max_len)
    if r.kind == "yarn":
      parameters.update(original_max_position_embeddings=r.original_max_len,
                        beta_fast=r.beta_fast, beta_slow=r.beta_slow, truncate=r.truncate)
      parameters.update({name: getattr(r, name) for name in
                         ("mscale", "mscale_all_dim", "attention_factor")
                         if getattr(r, name) is not None})
  legacy = {k: v for k, v in parameters.items() if k != "rope_theta"}
  return {"rope_parameters": parameters, "rope_theta": c.rotary_base,
          "rope_scaling": legacy if c.rope_scaling is not None else None}


def _llama_config(c) -> dict:
  """The config.json fields of the Llama family's decoder (sizes, norm, activation, rotary)."""
  return {"vocab_size": c.vocab_size, "max_position_embeddings": c.max_len,
          "hidden_size": c.width, "num_hidden_layers": c.depth,
          "num_attention_heads": c.num_heads,
          "num_key_value_heads": c.num_kv_heads or c.num_heads,
          "head_dim": c.head_dim or c.width // c.num_heads, "intermediate_size": c.mlp_dim,
          "rms_norm_eps": c.ln_eps, "hidden_act": _HF_ACTIVATION[c.activation],
          "tie_word_embeddings": c.tie_embeddings, "initializer_range": 0.02,
          **_rope_config(c)}


_HF_MLP = ("gate_proj", "up_proj", "down_proj")  # our gate, fc1, fc2
_MIXTRAL_EXPERTS = ("block_sparse_moe.", ("w1", "w3", "w2"))


_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def _no_sliding_layers(config: JsonObject, family: str):
  """Qwen2/Qwen3 checkpoints with a window on some layers are refused (none published)."""
  if config.boolean("use_sliding_window", False):
    raise ValueError(f"{config.source}: {family} checkpoints with use_sliding_window=true (a "
                     "window on some layers only) are not supported; the published models "
                     "have it false.")


class LlamaFormat:
  """LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM
  checkpoints."""
  family = Llama
  model_types = tuple(_ARCHITECTURES)
  prefix = ""
  ignore = ("model.layers.*.self_attn.rotary_emb.inv_freq", "lm_head.weight")  # buffers; tied

  @staticmethod
  def fields(config: JsonObject, tensors) -> dict:
    model_type = config.string("model_type")
    width = config.integer("hidden_size", minimum=1)
    heads = config.integer("num_attention_heads", minimum=1)
    head_dim = config.integer("head_dim", width // heads, minimum=1)
    rotary_base, rope_scaling = _rope(config)
    fields = dict(vocab_size=config.integer("vocab_size", minimum=1),
                  max_len=config.integer("max_position_embeddings", minimum=1),
                  width=width, depth=config.integer("num_hidden_layers", minimum=1),
                  num_heads=heads,
                  num_kv_heads=config.integer("num_key_value_heads", heads, minimum=1),
                  head_dim=None if head_dim == width // heads else head_dim,
                  mlp_dim=config.integer("intermediate_size", minimum=1),
                  ln_eps=config.number("rms_norm_eps", 1e-6, positive=True),
                  rotary_base=rotary_base, rope_scaling=rope_scaling,
                  tie_embeddings=config.boolean("tie_word_embeddings", False),
                  activation=_activation(config, "hidden_act", "silu"))
    if model_type == "qwen2":
      _no_sliding_layers(config, "Qwen2")
      fields.update(qkv_bias=True, out_bias=False)
    elif model_type == "qwen3":
      _no_sliding_layers(config, "Qwen3")
      bias = config.boolean("attention_bias", False)
      fields.update(qkv_bias=bias, out_bias=bias, qk_norm=True)
    elif model_type == "mistral":
      window = config.integer("sliding_window", None, minimum=1)
      fields["local_window"] = None if window is None else window - 1
    else:
      bias = config.boolean("attention_bias", False)
      fields.update(qkv_bias=bias, out_bias=bias, mlp_bias=config.boolean("mlp_bias", False))
    return fields

  @staticmethod
  def model_type(model) -> str:
    c = model.config
    if c.qk_norm:
      if c.qkv_bias != c.out_bias or c.mlp_bias or c.local_window is not None:
        raise ValueError("the Qwen3 format (the Llama family's only one with QK-norm) has "
                         "biases on all of Q/K/V/O or none, no MLP bias and no window; this "
                         f"model has qkv_bias={c.qkv_bias}, out_bias={c.out_bias}, "
                         f"mlp_bias={c.mlp_bias}, local_window={c.local_window}.")
      return "qwen3"
    if c.qkv_bias and not c.out_bias and not c.mlp_bias:
      return "qwen2"
    if c.local_window is not None:
      if c.qkv_bias or c.out_bias or c.mlp_bias:
        raise ValueError("the Mistral format has no biases; this Llama has a local_window "
                         "and biases, which no Hugging Face format holds.")
      return "mistral"
    if c.qkv_bias != c.out_bias:
      raise ValueError("the Llama format has biases on all of Q/K/V/O or none (Qwen2: Q/K/V "
                       f"only); this model has qkv_bias={c.qkv_bias}, out_bias={c.out_bias}.")
    return "llama"

  @staticmethod
  def config(model: Llama) -> dict:
    c = model.config
    model_type = LlamaFormat.model_type(model)
    config = {"architectures": [_ARCHITECTURES[model_type]], "model_type": model_type,
              **_llama_config(c)}
    if model_type == "llama":
      config.update(attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias)
    elif model_type == "mistral":
      config["sliding_window"] = c.local_window + 1
    else:
      config.update(use_sliding_window=False, sliding_window=None)
      if model_type == "qwen3":
        config["attention_bias"] = c.qkv_bias
    return config

  @staticmethod
  def rename(name: str) -> str:
    return name

  @staticmethod
  def rules(model: Llama, with_mlm_head: bool = False, with_pooler: bool = False,
            hf_config: JsonObject | None = None) -> list[convert.Rule]:
    return _decoder_rules(model, (("input_layernorm", "attention_norm"),
                                  ("post_attention_layernorm", "mlp_norm")))


def _attention_rules(c, hf: str, attention: tuple[str, ...]) -> list[convert.Rule]:
  """One layer's q/k/v/o projections (and Qwen3's q/k norms): `hf` "model.layers.N.self_attn.",
  `attention` our layer's path."""
  heads, head_dim = c.num_heads, c.head_dim or c.width // c.num_heads
  kv_heads = c.num_kv_heads or heads
  rules = []
  for name, hf_name, count in (("query", "q_proj", heads), ("key", "k_proj", kv_heads),
                               ("value", "v_proj", kv_heads)):
    rules.append(linear_to_heads(f"{hf}{hf_name}.weight", attention + (name, "kernel"), count,
                                 head_dim))
    if c.qkv_bias:
      rules.append(bias_to_heads(f"{hf}{hf_name}.bias", attention + (name, "bias"), count,
                                 head_dim))
  rules.append(heads_to_linear(hf + "o_proj.weight", attention + ("out", "kernel"), heads,
                               head_dim))
  if c.out_bias:
    rules.append(same(hf + "o_proj.bias", attention + ("out", "bias")))
  if c.qk_norm:
    rules += [same(f"{hf}{hf_name}.weight", attention + (name, "scale"))
              for hf_name, name in (("q_norm", "query_norm"), ("k_norm", "key_norm"))]
  if c.learned_sinks:
    rules.append(same(hf + "sinks", attention + ("sinks",)))
  return rules


def _decoder_rules(model: Llama, norms: tuple[tuple[str, str], ...],
                   attention_rules=_attention_rules, moe_rules=None) -> list[convert.Rule]:
  """The Llama family's tensors; `norms` each layer's (HF norm name, ours);
  `attention_rules(config, hf prefix, our path)` each layer's attention tensors and
  `moe_rules(config, hf prefix, our path)` each mixture of experts' (default `_moe_rules`
  with the experts one by one as Qwen-MoE and DeepSeek name them)."""
  moe_rules = moe_rules or functools.partial(_moe_rules, legacy=("mlp.", _HF_MLP))
  c = model.config
  rules = [same("model.embed_tokens.weight", ("embed", "token", "embedding")),
           same("model.norm.weight", ("final_norm", "scale"))]
  if not c.tie_embeddings:
    rules.append(linear("lm_head.weight", ("lm_head", "kernel")))
  for i in range(c.depth):
    hf, ours = f"model.layers.{i}.", (f"block_{i}",)
    rules += attention_rules(c, hf + "self_attn.", ours + ("attention",))
    rules += [same(f"{hf}{hf_name}.weight", ours + (name, "scale"))
              for hf_name, name in norms]
    if c.num_experts and i >= c.first_k_dense_replace:
      rules += moe_rules(c, hf + "mlp.", ours + ("mlp",))
    else:
      rules += _mlp_rules(c, hf + "mlp.", ours + ("mlp",))
  return rules


def _mlp_rules(c, hf: str, mlp: tuple[str, ...]) -> list[convert.Rule]:
  """A dense SwiGLU MLP: gate_proj, up_proj, down_proj (our gate, fc1, fc2)."""
  rules = []
  for name, hf_name in zip(("gate", "fc1", "fc2"), _HF_MLP):
    rules.append(linear(f"{hf}{hf_name}.weight", mlp + (name, "kernel")))
    if c.mlp_bias:
      rules.append(same(f"{hf}{hf_name}.bias", mlp + (name, "bias")))
  return rules


def _moe_rules(c, hf: str, mlp: tuple[str, ...],
               legacy: tuple[str, tuple[str, str, str]]) -> list:
  """A mixture of experts (our router [width, E], experts/gate, fc1 [E, width, F] and fc2
  [E, F, width]; shared_experts, shared_expert_gate and e_score_correction_bias when the
  config has them) in either layout checkpoints carry: one tensor per expert (what
  transformers 5's save_pretrained writes, and we export), `legacy` = (the module holding
  gate and experts instead of "mlp.", the names of an expert's gate, up and down
  projections): Mixtral's `block_sparse_moe.{gate, experts.N.w1, w3, w2}`, Qwen-MoE's and
  DeepSeek's `mlp.{gate, experts.N.gate_proj, up_proj, down_proj}`; or transformers'
  in-memory fused `mlp.{gate, experts.gate_up_proj [E, 2F, width] (gate rows, then up
  rows), experts.down_proj [E, width, F]}`."""
  hidden = c.expert_mlp_dim or c.mlp_dim
  experts = mlp + ("experts",)
  sparse = hf.replace(".mlp.", "." + legacy[0])
  per_expert = [linear(f"{sparse}gate.weight", mlp + ("router", "kernel"))]
  for e in range(c.num_experts):
    per_expert += [convert.slice_of(linear(f"{sparse}experts.{e}.{hf_name}.weight",
                                           experts + (name,)), e)
                   for name, hf_name in zip(("gate", "fc1", "fc2"), legacy[1])]
  swap = lambda t: np.swapaxes(t, 1, 2)
  fused = [linear(f"{hf}gate.weight", mlp + ("router", "kernel")),
           convert.Rule(f"{hf}experts.gate_up_proj", (experts + ("gate",), experts + ("fc1",)),
                        lambda t: (swap(t[:, :hidden]), swap(t[:, hidden:])),
                        lambda gate, up: np.concatenate([swap(gate), swap(up)], axis=1)),
           convert.Rule(f"{hf}experts.down_proj", (experts + ("fc2",),),
                        lambda t: (swap(t),), swap)]
  rules = [convert.Choice((tuple(per_expert), tuple(fused)))]
  if c.router_correction_bias:
    rules.append(same(f"{hf}gate.e_score_correction_bias", mlp + (moe.CORRECTION_BIAS,)))
  if c.n_shared_experts:
    shared = "shared_expert" if c.shared_expert_gate else "shared_experts"  # Qwen; DeepSeek
    rules += [linear(f"{hf}{shared}.{hf_name}.weight", mlp + ("shared_experts", name, "kernel"))
              for name, hf_name in zip(("gate", "fc1", "fc2"), _HF_MLP)]
  if c.shared_expert_gate:
    rules.append(linear(f"{hf}shared_expert_gate.weight",
                        mlp + ("shared_expert_gate", "kernel")))
  return rules


def _gpt_oss_moe_rules(c, hf: str, mlp: tuple[str, ...]) -> list[convert.Rule]:
  """GPT-OSS's mixture: router weight and bias; experts fused, gate_up_proj [E, width, 2F]
  with gate and up columns interleaved (gate even, up odd) and its bias [E, 2F], down_proj
  [E, F, width] and its bias [E, width] (our experts/{gate, fc1, fc2} and their biases)."""
  experts = mlp + ("experts",)
  split = lambda t: (t[..., 0::2], t[..., 1::2])
  interleave = lambda gate, up: np.stack([gate, up], axis=-1).reshape(
      gate.shape[:-1] + (2 * gate.shape[-1],))
  return [linear(f"{hf}router.weight", mlp + ("router", "kernel")),
          same(f"{hf}router.bias", mlp + ("router", "bias")),
          convert.Rule(f"{hf}experts.gate_up_proj", (experts + ("gate",), experts + ("fc1",)),
                       split, interleave),
          convert.Rule(f"{hf}experts.gate_up_proj_bias",
                       (experts + ("gate_bias",), experts + ("fc1_bias",)), split, interleave),
          same(f"{hf}experts.down_proj", experts + ("fc2",)),
          same(f"{hf}experts.down_proj_bias", experts + ("fc2_bias",))]


_HF_LAYER_TYPES = {"sliding": "sliding_attention", "full": "full_attention"}
_GEMMA_ARCHITECTURES = {"gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}


def _gemma_layer_types(config: JsonObject, model_type: str, depth: int) -> tuple[str, ...]:
  """Each layer's type: config.json's layer_types, else 4.x's pattern (Gemma 2: every other
  layer full; Gemma 3: every sliding_window_pattern-th, 6 by default)."""
  written = config.strings("layer_types", tuple(_HF_LAYER_TYPES.values()))
  if written is None:
    period = 2 if model_type == "gemma2" else config.integer(
        "sliding_window_pattern", config.integer("_sliding_window_pattern", 6, minimum=1),
        minimum=1)
    return gemma_layer_types(depth, period)
  if len(written) != depth:
    raise ValueError(f"{config.source}: layer_types has {len(written)} entries for "
                     f"num_hidden_layers={depth}.")
  ours = {hf: name for name, hf in _HF_LAYER_TYPES.items()}
  return tuple(ours[t] for t in written)


def _gemma3_rope(config: JsonObject) -> tuple[float, RopeScaling | None, float]:
  """(global rotary base, its scaling, the sliding layers' base) of a Gemma 3 config.json:
  transformers 5's rope_parameters per layer type, or 4.x's rope_theta + rope_scaling and
  rope_local_base_freq."""
  parameters = config.object("rope_parameters")
  if "full_attention" not in parameters and "sliding_attention" not in parameters:
    theta, scaling = _rope(config)
    return theta, scaling, config.number("rope_local_base_freq", 10000.0, positive=True)
  limits = {"max_position_embeddings": config.integer("max_position_embeddings", minimum=1)}
  full = JsonObject({**limits, "rope_parameters": dict(parameters.object("full_attention"))},
                    config.source)
  local = JsonObject({**limits, "rope_parameters": dict(parameters.object(
      "sliding_attention"))}, config.source)
  theta, scaling = _rope(full)
  local_theta, local_scaling = _rope(local)
  if local_scaling is not None:
    raise ValueError(f"{parameters.source}: rope scaling on the sliding layers is not "
                     "supported (Gemma 3 scales only its full layers).")
  return theta, scaling, local_theta


class GemmaFormat:
  """Gemma2ForCausalLM and Gemma3ForCausalLM (Gemma 3's text-only models, model_type
  gemma3_text) checkpoints."""
  family = Gemma
  model_types = tuple(_GEMMA_ARCHITECTURES)
  prefix = ""
  ignore = LlamaFormat.ignore

  @staticmethod
  def fields(config: JsonObject, tensors) -> dict:
    model_type = config.string("model_type")
    if config.boolean("use_bidirectional_attention", False):
      raise ValueError(f"{config.source}: use_bidirectional_attention=true (an encoder, "
                       "EmbeddingGemma) is not supported; Gemma here is a causal decoder.")
    depth = config.integer("num_hidden_layers", minimum=1)
    heads = config.integer("num_attention_heads", minimum=1)
    width = config.integer("hidden_size", minimum=1)
    head_dim = config.integer("head_dim", 256, minimum=1)
    bias = config.boolean("attention_bias", False)
    layer_types = _gemma_layer_types(config, model_type, depth)
    window = config.integer("sliding_window", None, minimum=1)
    if "sliding" not in layer_types:
      layer_types, window = None, None
    elif window is None:
      raise ValueError(f"{config.source} has sliding layers but no sliding_window.")
    scalar = config.integer("query_pre_attn_scalar", head_dim, minimum=1)
    fields = dict(vocab_size=config.integer("vocab_size", minimum=1),
                  max_len=config.integer("max_position_embeddings", minimum=1),
                  width=width, depth=depth, num_heads=heads,
                  num_kv_heads=config.integer("num_key_value_heads", heads, minimum=1),
                  head_dim=None if head_dim == width // heads else head_dim,
                  mlp_dim=config.integer("intermediate_size", minimum=1),
                  ln_eps=config.number("rms_norm_eps", 1e-6, positive=True),
                  tie_embeddings=config.boolean("tie_word_embeddings", True),
                  activation=_activation(config, "hidden_activation", "gelu_pytorch_tanh"),
                  qkv_bias=bias, out_bias=bias, layer_types=layer_types,
                  local_window=None if window is None else window - 1,
                  query_pre_attn_scalar=None if scalar == head_dim else scalar,
                  attn_logits_soft_cap=config.number("attn_logit_softcapping", None,
                                                     positive=True),
                  final_logits_soft_cap=config.number("final_logit_softcapping", None,
                                                      positive=True))
    if model_type == "gemma2":
      fields["rotary_base"], fields["rope_scaling"] = _rope(config)
    else:
      theta, scaling, local_theta = _gemma3_rope(config)
      fields.update(rotary_base=theta, rope_scaling=scaling, qk_norm=True,
                    local_rotary_base=None if layer_types is None else local_theta)
    return fields

  @staticmethod
  def model_type(model) -> str:
    c = model.config
    wanted = {"norm": "rms_unit_offset", "post_norms": True, "scale_embeddings": True,
              "mlp_bias": False, "qkv_bias": c.out_bias}
    wrong = {f: getattr(c, f) for f, v in wanted.items() if getattr(c, f) != v}
    if wrong:
      raise ValueError(f"the Gemma formats need {wanted}; this model has {wrong}.")
    if c.query_pre_attn_scalar is not None and not float(c.query_pre_attn_scalar).is_integer():
      raise ValueError("the Gemma formats store query_pre_attn_scalar as an integer; this "
                       f"model has {c.query_pre_attn_scalar}.")
    if c.qk_norm:
      return "gemma3_text"
    if c.local_rotary_base is not None:
      raise ValueError("a Gemma without qk_norm is written as Gemma 2, which has one rotary "
                       f"base; this model has local_rotary_base={c.local_rotary_base}.")
    return "gemma2"

  @staticmethod
  def config(model: Gemma) -> dict:
    c = model.config
    model_type = GemmaFormat.model_type(model)
    head_dim = c.head_dim or c.width // c.num_heads
    types = c.layer_types or (("full" if c.local_window is None else "sliding"),) * c.depth
    activation = "gelu_pytorch_tanh" if c.activation == "gelu_tanh" else (
        _HF_ACTIVATION[c.activation])
    config = {"architectures": [_GEMMA_ARCHITECTURES[model_type]], "model_type": model_type,
              "vocab_size": c.vocab_size, "max_position_embeddings": c.max_len,
              "hidden_size": c.width, "num_hidden_layers": c.depth,
              "num_attention_heads": c.num_heads,
              "num_key_value_heads": c.num_kv_heads or c.num_heads, "head_dim": head_dim,
              "intermediate_size": c.mlp_dim, "rms_norm_eps": c.ln_eps,
              "hidden_activation": activation, "tie_word_embeddings": c.tie_embeddings,
              "attention_bias": c.qkv_bias, "initializer_range": 0.02,
              "query_pre_attn_scalar": int(c.query_pre_attn_scalar or head_dim),  # an int
              "attn_logit_softcapping": c.attn_logits_soft_cap,
              "final_logit_softcapping": c.final_logits_soft_cap,
              "sliding_window": None if c.local_window is None else c.local_window + 1,
              "layer_types": [_HF_LAYER_TYPES[t] for t in types], **_rope_config(c)}
    if model_type == "gemma3_text":
      local = c.rotary_base if c.local_rotary_base is None else c.local_rotary_base
      config["rope_parameters"] = {
          "full_attention": config["rope_parameters"],
          "sliding_attention": {"rope_type": "default", "rope_theta": local}}
      config["rope_local_base_freq"] = local
    return config

  @staticmethod
  def rename(name: str) -> str:
    return name

  @staticmethod
  def rules(model: Gemma, with_mlm_head: bool = False, with_pooler: bool = False,
            hf_config: JsonObject | None = None) -> list[convert.Rule]:
    return _decoder_rules(model, (("input_layernorm", "attention_norm"),
                                  ("post_attention_layernorm", "attention_post_norm"),
                                  ("pre_feedforward_layernorm", "mlp_norm"),
                                  ("post_feedforward_layernorm", "mlp_post_norm")))


_MOE_ARCHITECTURES = {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
                      "qwen3_moe": "Qwen3MoeForCausalLM", "gpt_oss": "GptOssForCausalLM"}


def _gpt_oss_fields(config: JsonObject, tensors) -> dict:
  """GPT-OSS: the Llama decoder with attention biases, learned sinks, sliding layers between
  full ones, and a mixture whose router and experts have biases, experts with the clamped
  SwiGLU; quantised (MXFP4) checkpoints are refused."""
  if config.get("quantization_config") is not None:
    raise ValueError(f"{config.source} describes a quantised checkpoint (quantization_config, "
                     "GPT-OSS's MXFP4 experts); attention_jax reads float weights: "
                     "dequantise it first (transformers: Mxfp4Config(dequantize=True)).")
  fields = LlamaFormat.fields(JsonObject({**dict(config), "model_type": "llama"},
                                         config.source), tensors)
  depth = fields["depth"]
  types = _gemma_layer_types(config, "gemma2", depth)  # layer_types, else alternating
  window = config.integer("sliding_window", None, minimum=1)
  if "sliding" in types and window is None:
    raise ValueError(f"{config.source} has sliding layers but no sliding_window.")
  fields.update(mlp_bias=True, learned_sinks=True, router_bias=True, norm_topk_prob=True,
                num_experts=config.integer("num_local_experts", minimum=1),
                experts_per_token=config.integer("num_experts_per_tok", minimum=1),
                swiglu_limit=config.number("swiglu_limit", 7.0, positive=True),
                swiglu_alpha=config.number("swiglu_alpha", 1.702, positive=True),
                layer_types=types if "sliding" in types else None,
                local_window=window - 1 if "sliding" in types else None)
  return fields


def _shared_experts(config: JsonObject, size_field: str, expert_dim: int) -> int:
  """How many experts' width the shared expert `size_field` is (0: none)."""
  size = config.integer(size_field, 0, minimum=0)
  if size % expert_dim:
    raise ValueError(f"{config.source}: {size_field}={size} is not a multiple of "
                     f"moe_intermediate_size={expert_dim}; attention_jax's shared experts are "
                     "n_shared_experts experts wide.")
  return size // expert_dim


def _qwen_moe_fields(config: JsonObject, model_type: str) -> dict:
  """The mixture fields of a Qwen2-MoE or Qwen3-MoE config.json: every layer sparse
  (decoder_sparse_step 1, no mlp_only_layers, as published)."""
  if config.integer("decoder_sparse_step", 1, minimum=1) != 1 or config.integers(
      "mlp_only_layers"):
    raise ValueError(f"{config.source}: decoder_sparse_step != 1 or mlp_only_layers (dense "
                     "MLPs between the sparse ones) are not supported; the published Qwen "
                     "MoE models have a mixture in every layer.")
  expert_dim = config.integer("moe_intermediate_size", minimum=1)
  experts = config.integer("num_experts", None, minimum=1)  # published config.json files
  if experts is None:  # transformers 5 writes Qwen3-MoE's as num_local_experts
    experts = config.integer("num_local_experts", minimum=1)
  fields = dict(num_experts=experts,
                experts_per_token=config.integer("num_experts_per_tok", minimum=1),
                expert_mlp_dim=expert_dim,
                norm_topk_prob=config.boolean("norm_topk_prob", False))
  if model_type == "qwen2_moe":
    shared = _shared_experts(config, "shared_expert_intermediate_size", expert_dim)
    fields.update(n_shared_experts=shared, shared_expert_gate=shared > 0)
  return fields


class MixtralFormat:
  """MixtralForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM and GptOssForCausalLM
  checkpoints (the Llama decoder with a mixture of experts in every layer; Qwen2-MoE adds its
  gated shared expert, Qwen3-MoE QK-norm, GPT-OSS sinks, alternating windows and biases),
  their experts one tensor each or fused (`_moe_rules`, `_gpt_oss_moe_rules`)."""
  family = Mixtral
  model_types = tuple(_MOE_ARCHITECTURES)
  prefix = ""
  ignore = LlamaFormat.ignore

  @staticmethod
  def fields(config: JsonObject, tensors) -> dict:
    model_type = config.string("model_type")
    if model_type == "gpt_oss":
      return _gpt_oss_fields(config, tensors)
    if model_type == "mixtral":
      fields = LlamaFormat.fields(config, tensors)  # Llama's, without biases
      window = config.integer("sliding_window", None, minimum=1)
      fields.update(local_window=None if window is None else window - 1,
                    num_experts=config.integer("num_local_experts", minimum=1),
                    experts_per_token=config.integer("num_experts_per_tok", minimum=1),
                    norm_topk_prob=True)
      return fields
    fields = LlamaFormat.fields(JsonObject({**dict(config), "model_type": model_type[:5]},
                                           config.source), tensors)  # qwen2 or qwen3's
    if model_type == "qwen2_moe":
      bias = config.boolean("qkv_bias", True)
      fields.update(qkv_bias=bias, out_bias=False)
    return {**fields, **_qwen_moe_fields(config, model_type)}

  @staticmethod
  def model_type(model) -> str:
    """qwen3_moe with QK-norm, qwen2_moe with a gated shared expert, else mixtral; a model
    none of them holds is refused, naming what it has."""
    c = model.config
    moe_defaults = dict(mlp_bias=False, router_bias=False, swiglu_limit=None)
    if c.learned_sinks:
      model_type, moe_defaults = "gpt_oss", {}
      wanted = {"qkv_bias": True, "out_bias": True, "mlp_bias": True, "router_bias": True,
                "norm_topk_prob": True, "qk_norm": False, "n_shared_experts": 0,
                "expert_mlp_dim": c.expert_mlp_dim and c.mlp_dim}
      if c.swiglu_limit is None:
        wanted["swiglu_limit"] = "a number"
    elif c.qk_norm:
      model_type, wanted = "qwen3_moe", {"qkv_bias": c.out_bias, "n_shared_experts": 0}
    elif c.shared_expert_gate:
      model_type, wanted = "qwen2_moe", {"out_bias": False}
    else:
      model_type = "mixtral"
      wanted = {"qkv_bias": False, "out_bias": False, "norm_topk_prob": True,
                "n_shared_experts": 0, "expert_mlp_dim": c.expert_mlp_dim and c.mlp_dim}
    wanted.update(**moe_defaults, router_scoring="softmax", routed_scaling_factor=1.0,
                  n_group=None, router_correction_bias=False, first_k_dense_replace=0)
    if model_type != "gpt_oss":
      wanted["layer_types"] = None
    if model_type not in ("mixtral", "gpt_oss"):
      wanted["local_window"] = None
    wrong = {f: getattr(c, f) for f, want in wanted.items() if getattr(c, f) != want}
    if wrong:
      raise ValueError(f"the {_MOE_ARCHITECTURES[model_type]} format needs {wanted}; this "
                       f"model has {wrong}.")
    return model_type

  @staticmethod
  def config(model: Mixtral) -> dict:
    c = model.config
    model_type = MixtralFormat.model_type(model)
    config = {"architectures": [_MOE_ARCHITECTURES[model_type]], "model_type": model_type,
              **_llama_config(c), "num_experts_per_tok": c.experts_per_token}
    window = None if c.local_window is None else c.local_window + 1
    if model_type == "mixtral":
      return {**config, "num_local_experts": c.num_experts, "router_jitter_noise": 0.0,
              "sliding_window": window}
    if model_type == "gpt_oss":
      types = c.layer_types or (("full" if window is None else "sliding"),) * c.depth
      return {**config, "num_local_experts": c.num_experts, "attention_bias": True,
              "sliding_window": window, "layer_types": [_HF_LAYER_TYPES[t] for t in types],
              "swiglu_limit": c.swiglu_limit, "swiglu_alpha": c.swiglu_alpha}
    expert_dim = c.expert_mlp_dim or c.mlp_dim
    config.update(num_experts=c.num_experts, moe_intermediate_size=expert_dim,
                  norm_topk_prob=c.norm_topk_prob, decoder_sparse_step=1, mlp_only_layers=[],
                  use_sliding_window=False, sliding_window=None)
    if model_type == "qwen2_moe":
      config.update(qkv_bias=c.qkv_bias,
                    shared_expert_intermediate_size=c.n_shared_experts * expert_dim)
    else:
      config["attention_bias"] = c.qkv_bias
    return config

  @staticmethod
  def rename(name: str) -> str:
    return name

  @staticmethod
  def rules(model: Mixtral, with_mlm_head: bool = False, with_pooler: bool = False,
            hf_config: JsonObject | None = None) -> list[convert.Rule]:
    model_type = MixtralFormat.model_type(model)
    moe_rules = {"gpt_oss": _gpt_oss_moe_rules,
                 "mixtral": functools.partial(_moe_rules, legacy=_MIXTRAL_EXPERTS)
                 }.get(model_type)  # Qwen-MoE: the default
    return _decoder_rules(model, (("input_layernorm", "attention_norm"),
                                  ("post_attention_layernorm", "mlp_norm")),
                          moe_rules=moe_rules)


_DEEPSEEK_ARCHITECTURES = {"deepseek_v2": "DeepseekV2ForCausalLM",
                           "deepseek_v3": "DeepseekV3ForCausalLM"}


def _deinterleaved(rows: int, rope_start: int, rope_dim: int, period: int) -> np.ndarray:
  """Row order that takes every `period`-row group's rotary part [rope_start, rope_start +
  rope_dim) from DeepSeek's interleaved pairs (x0, x1), (x2, x3), ... to our rotate-half
  layout (x0, x2, ..., x1, x3, ...); the other rows stay."""
  order = np.arange(rows).reshape(-1, period)
  rope = order[:, rope_start:rope_start + rope_dim]
  order[:, rope_start:rope_start + rope_dim] = np.concatenate([rope[:, 0::2], rope[:, 1::2]],
                                                              axis=1)
  return order.reshape(-1)


def _latent_attention_rules(c, hf: str, attention: tuple[str, ...],
                            interleaved: bool = True) -> list[convert.Rule]:
  """One DeepSeek layer's latent attention tensors: q_proj (or q_a_proj, q_a_layernorm,
  q_b_proj), kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj, with the rotary rows
  reordered from the `interleaved` layout."""
  heads, nope, rope, rank = c.num_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.kv_lora_rank
  qk_dim = nope + rope
  order = lambda rule, rows, start, period: (
      convert.reorder_rows(rule, _deinterleaved(rows, start, rope, period)) if interleaved
      else rule)
  query = lambda hf_name, name: order(linear_to_heads(
      f"{hf}{hf_name}.weight", attention + (name, "kernel"), heads, qk_dim), heads * qk_dim,
      nope, qk_dim)
  if c.q_lora_rank is None:
    rules = [query("q_proj", "query")]
  else:
    rules = [linear(hf + "q_a_proj.weight", attention + ("query_down", "kernel")),
             same(hf + "q_a_layernorm.weight", attention + ("query_down_norm", "scale")),
             query("q_b_proj", "query_up")]
    if c.qkv_bias:
      rules.append(same(hf + "q_a_proj.bias", attention + ("query_down", "bias")))
  latent = lambda rule: order(rule, rank + rope, rank, rank + rope)
  rules += [latent(linear(hf + "kv_a_proj_with_mqa.weight", attention + ("kv_down", "kernel"))),
            same(hf + "kv_a_layernorm.weight", attention + ("kv_down_norm", "scale")),
            linear_to_heads(hf + "kv_b_proj.weight", attention + ("kv_up", "kernel"), heads,
                            nope + c.v_head_dim),
            heads_to_linear(hf + "o_proj.weight", attention + ("out", "kernel"), heads,
                            c.v_head_dim)]
  if c.qkv_bias:
    rules.append(latent(same(hf + "kv_a_proj_with_mqa.bias", attention + ("kv_down", "bias"))))
  if c.out_bias:
    rules.append(same(hf + "o_proj.bias", attention + ("out", "bias")))
  return rules


def _deepseek_moe_fields(config: JsonObject, model_type: str, depth: int) -> dict:
  """The mixture fields of a DeepSeek config.json (none when every MLP is dense): V3 routes
  by sigmoid scores with the correction bias and group-limited top-k; V2 by softmax, limited
  to groups with topk_method "group_limited_greedy"."""
  dense = config.integer("first_k_dense_replace", 0, minimum=0)
  experts = config.integer("n_routed_experts", None, minimum=0)
  if not experts or dense >= depth:
    return {}
  expert_dim = config.integer("moe_intermediate_size", minimum=1)
  fields = dict(num_experts=experts, first_k_dense_replace=dense, expert_mlp_dim=expert_dim,
                experts_per_token=config.integer("num_experts_per_tok", minimum=1),
                n_shared_experts=config.integer("n_shared_experts", 0, minimum=0),
                routed_scaling_factor=config.number("routed_scaling_factor", 1.0,
                                                    positive=True),
                norm_topk_prob=config.boolean("norm_topk_prob", model_type == "deepseek_v3"))
  grouped = dict(n_group=config.integer("n_group", minimum=1),
                 topk_group=config.integer("topk_group", minimum=1))
  if model_type == "deepseek_v3":
    return {**fields, **grouped, "router_scoring": "sigmoid", "router_correction_bias": True}
  method = config.string("topk_method", "greedy")
  if method not in ("greedy", "group_limited_greedy"):
    raise ValueError(f"{config.source}: topk_method {method!r} is not DeepSeek-V2's "
                     "('greedy' or 'group_limited_greedy').")
  if fields["norm_topk_prob"]:
    raise ValueError(f"{config.source}: norm_topk_prob=true on DeepSeek-V2 is ambiguous "
                     "(transformers ignores it; DeepSeek's code renormalises instead of "
                     "scaling); the published V2 models have it false.")
  return {**fields, **(grouped if method == "group_limited_greedy" else {})}


class DeepseekFormat:
  """DeepseekV2ForCausalLM and DeepseekV3ForCausalLM checkpoints: latent attention, dense
  MLPs in the first first_k_dense_replace layers and mixtures of experts above (V2: softmax
  routing; V3: sigmoid routing with the correction bias, group-limited). Exported as V3
  unless the router is V2's (softmax)."""
  family = Deepseek
  model_types = tuple(_DEEPSEEK_ARCHITECTURES)
  prefix = ""
  ignore = LlamaFormat.ignore

  @staticmethod
  def fields(config: JsonObject, tensors) -> dict:
    model_type = config.string("model_type")
    depth = config.integer("num_hidden_layers", minimum=1)
    rotary_base, rope_scaling = _rope(config)
    bias = config.boolean("attention_bias", False)
    if config.boolean("mlp_bias", False):
      raise ValueError(f"{config.source}: mlp_bias=true is not supported for DeepSeek (the "
                       "published models have none).")
    return dict(vocab_size=config.integer("vocab_size", minimum=1),
                max_len=config.integer("max_position_embeddings", minimum=1),
                width=config.integer("hidden_size", minimum=1), depth=depth,
                num_heads=config.integer("num_attention_heads", minimum=1),
                mlp_dim=config.integer("intermediate_size", minimum=1),
                ln_eps=config.number("rms_norm_eps", 1e-6, positive=True),
                rotary_base=rotary_base, rope_scaling=rope_scaling,
                tie_embeddings=config.boolean("tie_word_embeddings", False),
                activation=_activation(config, "hidden_act", "silu"),
                qkv_bias=bias, out_bias=bias,
                kv_lora_rank=config.integer("kv_lora_rank", minimum=1),
                q_lora_rank=config.integer("q_lora_rank", None, minimum=1),
                qk_nope_head_dim=config.integer("qk_nope_head_dim", minimum=1),
                qk_rope_head_dim=config.integer("qk_rope_head_dim", minimum=2),
                v_head_dim=config.integer("v_head_dim", minimum=1),
                **_deepseek_moe_fields(config, model_type, depth))

  @staticmethod
  def interleaved(config: JsonObject | None) -> bool:
    """Whether the rotary rows are in DeepSeek's interleaved pairs: always for V2, V3's
    rope_interleave (true by default); our exports write them so."""
    if config is None or config.string("model_type") == "deepseek_v2":
      return True
    return config.boolean("rope_interleave", True)

  @staticmethod
  def config(model: Deepseek) -> dict:
    c = model.config
    if c.qkv_bias != c.out_bias or c.mlp_bias:
      raise ValueError("the DeepSeek format has attention biases on all projections or none "
                       f"and no MLP bias; this model has qkv_bias={c.qkv_bias}, "
                       f"out_bias={c.out_bias}, mlp_bias={c.mlp_bias}.")
    config = {"vocab_size": c.vocab_size,
              "max_position_embeddings": c.max_len, "hidden_size": c.width,
              "num_hidden_layers": c.depth, "num_attention_heads": c.num_heads,
              "num_key_value_heads": c.num_heads, "intermediate_size": c.mlp_dim,
              "first_k_dense_replace": c.depth, "rms_norm_eps": c.ln_eps,
              "hidden_act": _HF_ACTIVATION[c.activation],
              "tie_word_embeddings": c.tie_embeddings, "attention_bias": c.qkv_bias,
              "initializer_range": 0.02, "kv_lora_rank": c.kv_lora_rank,
              "q_lora_rank": c.q_lora_rank, "qk_nope_head_dim": c.qk_nope_head_dim,
              "qk_rope_head_dim": c.qk_rope_head_dim, "v_head_dim": c.v_head_dim,
              "rope_interleave": True, **_rope_config(c)}
    model_type = DeepseekFormat.model_type(model)
    config.update(architectures=[_DEEPSEEK_ARCHITECTURES[model_type]], model_type=model_type)
    if c.num_experts:
      config.update(n_routed_experts=c.num_experts, num_experts_per_tok=c.experts_per_token,
                    first_k_dense_replace=c.first_k_dense_replace,
                    moe_intermediate_size=c.expert_mlp_dim or c.mlp_dim,
                    n_shared_experts=c.n_shared_experts, norm_topk_prob=c.norm_topk_prob,
                    routed_scaling_factor=c.routed_scaling_factor, n_group=c.n_group or 1,
                    topk_group=c.topk_group or 1)
      if model_type == "deepseek_v2":
        config["topk_method"] = "greedy" if c.n_group is None else "group_limited_greedy"
    return config

  @staticmethod
  def model_type(model: Deepseek) -> str:
    """deepseek_v2 for V2's softmax router, else deepseek_v3; a mixture neither format
    holds is refused, naming what it has."""
    c = model.config
    if not c.num_experts:
      return "deepseek_v3"
    if c.router_scoring == "softmax":
      model_type = "deepseek_v2"
      wanted = {"router_correction_bias": False, "norm_topk_prob": False}
    else:
      model_type = "deepseek_v3"
      wanted = {"router_correction_bias": True}
    wanted.update(shared_expert_gate=False)
    wrong = {f: getattr(c, f) for f, want in wanted.items() if getattr(c, f) != want}
    if c.n_group is None and model_type == "deepseek_v3":
      wrong["n_group"] = None
    if wrong:
      raise ValueError(f"the {_DEEPSEEK_ARCHITECTURES[model_type]} format's router needs "
                       f"{wanted}{' and n_group' if model_type == 'deepseek_v3' else ''}; "
                       f"this model has {wrong}.")
    return model_type

  @staticmethod
  def rename(name: str) -> str:
    return name

  @staticmethod
  def rules(model: Deepseek, with_mlm_head: bool = False, with_pooler: bool = False,
            hf_config: JsonObject | None = None) -> list[convert.Rule]:
    interleaved = DeepseekFormat.interleaved(hf_config)
    return _decoder_rules(model, (("input_layernorm", "attention_norm"),
                                  ("post_attention_layernorm", "mlp_norm")),
                          functools.partial(_latent_attention_rules, interleaved=interleaved))


FORMATS = {"bert": BertFormat, "gpt2": Gpt2Format, "whisper": WhisperFormat,
           **{model_type: LlamaFormat for model_type in LlamaFormat.model_types},
           **{model_type: GemmaFormat for model_type in GemmaFormat.model_types},
           **{model_type: DeepseekFormat for model_type in DeepseekFormat.model_types},
           **{model_type: MixtralFormat for model_type in MixtralFormat.model_types}}


def for_model_type(model_type: str):
  if model_type == "gemma3":
    raise ValueError("config.json has model_type 'gemma3' (Gemma3ForConditionalGeneration, "
                     "text and vision); only Gemma 3's text-only models (gemma3_text, "
                     "Gemma3ForCausalLM: gemma-3-270m, gemma-3-1b) are supported.")
  if model_type not in FORMATS:
    raise ValueError(f"config.json has model_type {model_type!r}; supported: "
                     f"{', '.join(sorted(FORMATS))} (architectures BertModel/BertFor*, "
                     "GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, "
                     "Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma2ForCausalLM, "
                     "Gemma3ForCausalLM, DeepseekV2ForCausalLM, DeepseekV3ForCausalLM, "
                     "MixtralForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM, "
                     "GptOssForCausalLM, WhisperForConditionalGeneration).")
  return FORMATS[model_type]


# Fields only some families' formats write (the first family named is the one to build),
# at the values every other format implies.
_FAMILY_ONLY = {
    ("Gemma",): {"attn_logits_soft_cap": None, "final_logits_soft_cap": None,
                 "query_pre_attn_scalar": None, "post_norms": False,
                 "scale_embeddings": False, "local_rotary_base": None},
    ("Gemma", "Mixtral"): {"layer_types": None},  # GPT-OSS alternates windows too
    ("Mixtral",): {"learned_sinks": False},  # GPT-OSS
    ("Deepseek",): {"kv_lora_rank": None},  # latent attention (its other fields need it)
    ("Mixtral", "Deepseek"): {"num_experts": None},  # a mixture of experts
}


def for_model(model):
  c = model.config
  fmt = next((fmt for fmt in (BertFormat, Gpt2Format, GemmaFormat, DeepseekFormat,
                              MixtralFormat, LlamaFormat, WhisperFormat)
               if isinstance(model, fmt.family)), None)
  if fmt is None:
    raise ValueError(f"no Hugging Face format for {type(model).__name__}; exportable: Bert, "
                     "GPT, Llama, Gemma, Deepseek, Mixtral, Whisper.")
  for families, defaults in _FAMILY_ONLY.items():
    unexpressed = [f"{f}={getattr(c, f)!r}" for f, default in defaults.items()
                   if getattr(c, f) != default]
    if families == ("Gemma",) and c.norm == "rms_unit_offset":
      unexpressed.append(f"norm={c.norm!r}")
    if fmt.family.__name__ not in families and unexpressed:
      raise ValueError(f"the model has {', '.join(unexpressed)}, which "
                       f"{type(model).__name__} checkpoints cannot express; export it "
                       f"without them, or build it as a {families[0]}.")
  return fmt
