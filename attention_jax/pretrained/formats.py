"""The Hugging Face BERT and GPT-2 formats: config.json <-> our model fields, and tensor rules.

BERT: `BertModel` names (`embeddings.*`, `encoder.layer.N.*`, `pooler.dense.*`), plus
`cls.predictions.*` (the MLM head) and `classifier.*` when the model has them; a `bert.`
prefix (BertFor* checkpoints), old `LayerNorm.gamma/beta` names and a missing pooler (BertFor
MaskedLM, TokenClassification, QuestionAnswering; it then starts fresh) are accepted on load. A
classifier over mean-pooled tokens is recorded as `"classifier_pooling": "mean"` in
config.json, which our loader reads and transformers ignores (it classifies from the pooler). GPT-2: `GPT2Model` names (`wte`, `wpe`,
`h.N.*`, `ln_f`), Conv1D weights stored [in, out], q/k/v fused in `c_attn`; a
`transformer.` prefix and the tied `lm_head.weight` are accepted on load.
"""

from __future__ import annotations

from attention_jax.models import GPT, Bert
from attention_jax.pretrained import convert
from attention_jax.pretrained.convert import (bias_to_heads, fused_to_heads, heads_to_linear,
                                              linear, linear_to_heads, same)

# HF activation names <-> ours (HF "gelu" is the exact erf GELU; "gelu_new" the tanh one).
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "relu": "relu", "silu": "silu", "swish": "silu"}
_HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def _activation(name: str) -> str:
  if name not in _ACTIVATIONS:
    raise ValueError(f"activation {name!r} in config.json is not supported; supported: "
                     f"{', '.join(sorted(_ACTIVATIONS))}.")
  return _ACTIVATIONS[name]


def _layer_norm(hf: str, path: tuple[str, ...]) -> list[convert.Rule]:
  return [same(hf + ".weight", path + ("scale",)), same(hf + ".bias", path + ("bias",))]


def _dense(hf: str, path: tuple[str, ...]) -> list[convert.Rule]:
  return [linear(hf + ".weight", path + ("kernel",)), same(hf + ".bias", path + ("bias",))]


class BertFormat:
  family = Bert
  model_type = "bert"
  prefix = "bert."
  # A buffer, the NSP head, and the MLM decoder (tied to the word embeddings).
  ignore = ("embeddings.position_ids", "cls.seq_relationship.*", "cls.predictions.decoder.*")

  @staticmethod
  def fields(config: dict, tensors) -> dict:
    if config.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError("only BERT checkpoints with absolute position embeddings are "
                       f"supported, got {config['position_embedding_type']!r}.")
    fields = dict(vocab_size=config["vocab_size"], max_len=config["max_position_embeddings"],
                  type_vocab_size=config.get("type_vocab_size", 2),
                  width=config["hidden_size"], depth=config["num_hidden_layers"],
                  num_heads=config["num_attention_heads"], mlp_dim=config["intermediate_size"],
                  dropout_rate=config.get("hidden_dropout_prob", 0.1),
                  attention_dropout_rate=config.get("attention_probs_dropout_prob", 0.1),
                  ln_eps=config.get("layer_norm_eps", 1e-12),
                  activation=_activation(config.get("hidden_act", "gelu")))
    if "classifier.weight" in tensors:
      fields["num_classes"] = int(tensors["classifier.weight"].shape[0])
      fields["classifier_pooling"] = config.get("classifier_pooling", "cls")
    return fields

  @staticmethod
  def rename(tensors: dict) -> dict:
    """Old TensorFlow-port names: LayerNorm.gamma/beta -> weight/bias."""
    def new(name):
      for old, current in ((".LayerNorm.gamma", ".LayerNorm.weight"),
                           (".LayerNorm.beta", ".LayerNorm.bias")):
        if name.endswith(old):
          return name[:-len(old)] + current
      return name
    return {new(name): t for name, t in tensors.items()}

  @staticmethod
  def config(model: Bert) -> dict:
    config = {"architectures": ["BertForSequenceClassification" if model.num_classes
                                else "BertModel"],
              "model_type": "bert", "vocab_size": model.vocab_size,
              "max_position_embeddings": model.max_len,
              "type_vocab_size": model.type_vocab_size, "hidden_size": model.width,
              "num_hidden_layers": model.depth, "num_attention_heads": model.num_heads,
              "intermediate_size": model.mlp_dim, "hidden_dropout_prob": model.dropout_rate,
              "attention_probs_dropout_prob": model.attention_dropout_rate,
              "layer_norm_eps": model.ln_eps, "hidden_act": _HF_ACTIVATION[model.activation],
              "position_embedding_type": "absolute", "pad_token_id": 0,
              "initializer_range": 0.02}
    if model.num_classes:
      config["num_labels"] = model.num_classes
      config["classifier_pooling"] = model.classifier_pooling
      config["id2label"] = {str(i): f"LABEL_{i}" for i in range(model.num_classes)}
      config["label2id"] = {f"LABEL_{i}": i for i in range(model.num_classes)}
    return config

  @staticmethod
  def rules(model: Bert, with_mlm_head: bool, with_pooler: bool = True) -> list[convert.Rule]:
    heads, head_dim = model.num_heads, model.width // model.num_heads
    rules = [same("embeddings.word_embeddings.weight", ("embed", "token", "embedding")),
             same("embeddings.position_embeddings.weight", ("embed", "position", "embedding")),
             same("embeddings.token_type_embeddings.weight",
                  ("embed", "token_type", "embedding")),
             *_layer_norm("embeddings.LayerNorm", ("embed", "norm"))]
    if with_pooler:
      rules += _dense("pooler.dense", ("pooler",))
    for i in range(model.depth):
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
    if model.num_classes:
      rules += _dense("classifier", ("classifier",))
    return rules


class Gpt2Format:
  family = GPT
  model_type = "gpt2"
  prefix = "transformer."
  ignore = ("h.*.attn.bias", "h.*.attn.masked_bias", "lm_head.weight")  # buffers; tied head

  @staticmethod
  def fields(config: dict, tensors) -> dict:
    width = config["n_embd"]
    return dict(vocab_size=config["vocab_size"], max_len=config["n_positions"], width=width,
                depth=config["n_layer"], num_heads=config["n_head"],
                mlp_dim=config.get("n_inner") or 4 * width,
                dropout_rate=config.get("resid_pdrop", 0.1),
                attention_dropout_rate=config.get("attn_pdrop", 0.1),
                ln_eps=config.get("layer_norm_epsilon", 1e-5),
                activation=_activation(config.get("activation_function", "gelu_new")))

  @staticmethod
  def config(model: GPT) -> dict:
    if model.position != "learned" or model.num_kv_heads not in (None, model.num_heads):
      raise ValueError("the GPT-2 format holds learned positions and full multi-head "
                       f"attention; this GPT has position={model.position!r}, "
                       f"num_kv_heads={model.num_kv_heads}.")
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": model.vocab_size, "n_positions": model.max_len,
            "n_ctx": model.max_len, "n_embd": model.width, "n_layer": model.depth,
            "n_head": model.num_heads, "n_inner": model.mlp_dim,
            "activation_function": _HF_ACTIVATION[model.activation],
            "resid_pdrop": model.dropout_rate, "embd_pdrop": model.dropout_rate,
            "attn_pdrop": model.attention_dropout_rate, "layer_norm_epsilon": model.ln_eps,
            "tie_word_embeddings": True, "initializer_range": 0.02}

  @staticmethod
  def rename(tensors: dict) -> dict:
    return tensors

  @staticmethod
  def rules(model: GPT, with_mlm_head: bool = False, with_pooler: bool = False
            ) -> list[convert.Rule]:
    heads, head_dim = model.num_heads, model.width // model.num_heads
    rules = [same("wte.weight", ("embed", "token", "embedding")),
             same("wpe.weight", ("embed", "position", "embedding")),
             *_layer_norm("ln_f", ("final_norm",))]
    for i in range(model.depth):
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


FORMATS = {f.model_type: f for f in (BertFormat, Gpt2Format)}


def for_model_type(model_type: str):
  if model_type not in FORMATS:
    raise ValueError(f"config.json has model_type {model_type!r}; supported: "
                     f"{', '.join(sorted(FORMATS))}.")
  return FORMATS[model_type]


def for_model(model):
  for fmt in FORMATS.values():
    if isinstance(model, fmt.family):
      return fmt
  raise ValueError(f"no Hugging Face format for {type(model).__name__}; exportable: "
                   f"{', '.join(f.family.__name__ for f in FORMATS.values())}.")
