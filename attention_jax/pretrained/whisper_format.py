"""Whisper's Hugging Face checkpoints (WhisperForConditionalGeneration, model_type
"whisper"): the format `formats.FORMATS` names for it, kept apart from the text formats.

Tensors are `model.encoder.*` and `model.decoder.*`; the output projection `proj_out` is
tied to the decoder's token table (ignored on load, not written). transformers stores the
encoder's sinusoidal positions as a frozen tensor (`embed_positions`), which we compute: a
checkpoint's table is checked against ours on load (a different table is a different model)
and written on export.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from attention_jax.models.whisper import Whisper, whisper_sinusoids
from attention_jax.pretrained import convert
from attention_jax.pretrained.convert import (bias_to_heads, heads_to_linear,
                                              linear_to_heads, same)
from attention_jax.pretrained.json_file import JsonObject

POSITION_TOLERANCE = 1e-3  # float32 tables are ~1e-4 off the exact sinusoids (bf16: ulps)


_layer_norm, _dense = convert.layer_norm, convert.dense


def _conv(hf: str, path: tuple[str, ...]) -> list[convert.Rule]:
  """torch Conv1d weight [out, in, width] <-> Flax Conv kernel [width, in, out]."""
  return [convert.Rule(hf + ".weight", (path + ("kernel",),),
                       lambda t: (t.transpose(2, 1, 0),), lambda p: p.transpose(2, 1, 0)),
          same(hf + ".bias", path + ("bias",))]


def _attention(hf: str, path: tuple[str, ...], heads: int, head_dim: int) -> list[convert.Rule]:
  rules = [linear_to_heads(f"{hf}.k_proj.weight", path + ("key", "kernel"), heads, head_dim)]
  for theirs, ours in (("q_proj", "query"), ("v_proj", "value")):
    rules += [linear_to_heads(f"{hf}.{theirs}.weight", path + (ours, "kernel"), heads,
                              head_dim),
              bias_to_heads(f"{hf}.{theirs}.bias", path + (ours, "bias"), heads, head_dim)]
  return rules + [heads_to_linear(f"{hf}.out_proj.weight", path + ("out", "kernel"), heads,
                                  head_dim),
                  same(f"{hf}.out_proj.bias", path + ("out", "bias"))]


def _positions(length: int, width: int, source: str) -> convert.Rule:
  """The encoder's sinusoid table: checked on load (no parameter), written on export."""
  ours = whisper_sinusoids(length, width)

  def check(table):
    tolerance = max(POSITION_TOLERANCE, float(ml_dtypes.finfo(table.dtype).eps))
    table = np.asarray(table, np.float32)
    if table.shape != ours.shape or np.max(np.abs(table - ours)) > tolerance:
      raise ValueError(f"{source}: model.encoder.embed_positions.weight is not Whisper's "
                       f"sinusoid table (shape {table.shape}, expected {ours.shape}); this "
                       "model computes its encoder positions and cannot hold others.")
    return ()
  return convert.Rule("encoder.embed_positions.weight", (), check, lambda: ours)


def _special_ids(vocab_size: int) -> dict:
  """config.json's token ids: Whisper's (<|endoftext|>, <|startoftranscript|>: 50257 and
  50258 in the multilingual vocabularies, 50256 and 50257 in the English-only one of 51864),
  else the vocabulary's last id (transformers needs ids inside the vocabulary)."""
  if vocab_size >= 51865:
    end, start = 50257, 50258
  elif vocab_size == 51864:
    end, start = 50256, 50257
  else:
    end = start = vocab_size - 1
  return {"pad_token_id": end, "bos_token_id": end, "eos_token_id": end,
          "decoder_start_token_id": start}


class WhisperFormat:
  family = Whisper
  model_type = "whisper"
  prefix = "model."
  ignore = ("proj_out.weight",)  # tied to the decoder's token table

  @staticmethod
  def fields(config: JsonObject, tensors) -> dict:
    del tensors
    pairs = {name: (config.integer(f"encoder_{name}", minimum=1),
                    config.integer(f"decoder_{name}", minimum=1))
             for name in ("attention_heads", "ffn_dim")}
    different = [f"encoder_{n}={e} but decoder_{n}={d}" for n, (e, d) in pairs.items()
                 if e != d]
    if different:
      raise ValueError(f"{config.source}: {'; '.join(different)}; this Whisper has one "
                       "value for both.")
    if not config.boolean("tie_word_embeddings", True):
      raise ValueError(f"{config.source}: tie_word_embeddings=false (an output projection of "
                       "its own); this Whisper's logits use the token table, as Whisper's do.")
    if config.boolean("scale_embedding", False):
      raise ValueError(f"{config.source}: scale_embedding=true is not Whisper's; not "
                       "supported.")
    activation = config.string("activation_function", "gelu")
    if activation != "gelu":
      raise ValueError(f"{config.source}: activation_function={activation!r}; Whisper's "
                       "is 'gelu'.")
    return dict(vocab_size=config.integer("vocab_size", minimum=1),
                n_mels=config.integer("num_mel_bins", 80, minimum=1),
                width=config.integer("d_model", minimum=1),
                depth=config.integer("encoder_layers", minimum=1),
                decoder_depth=config.integer("decoder_layers", minimum=1),
                num_heads=pairs["attention_heads"][0], mlp_dim=pairs["ffn_dim"][0],
                max_source_positions=config.integer("max_source_positions", 1500, minimum=1),
                max_len=config.integer("max_target_positions", 448, minimum=1),
                dropout_rate=config.number("dropout", 0.0, at_most=1.0),
                attention_dropout_rate=config.number("attention_dropout", 0.0, at_most=1.0))

  @staticmethod
  def config(model: Whisper) -> dict:
    c = model.config
    return {"architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper",
            "vocab_size": c.vocab_size, "num_mel_bins": c.n_mels, "d_model": c.width,
            "encoder_layers": c.depth, "decoder_layers": c.decoder_depth or c.depth,
            "encoder_attention_heads": c.num_heads, "decoder_attention_heads": c.num_heads,
            "encoder_ffn_dim": c.mlp_dim, "decoder_ffn_dim": c.mlp_dim,
            "max_source_positions": c.max_source_positions,
            "max_target_positions": c.max_len, "activation_function": "gelu",
            "dropout": c.dropout_rate, "attention_dropout": c.attention_dropout_rate,
            "scale_embedding": False, "tie_word_embeddings": True,
            **_special_ids(c.vocab_size)}

  @staticmethod
  def rename(name: str) -> str:
    return name

  @staticmethod
  def rules(model: Whisper, with_mlm_head: bool = False, with_pooler: bool = False,
            hf_config: JsonObject | None = None) -> list[convert.Rule]:
    del with_mlm_head, with_pooler
    c = model.config
    heads, head_dim = c.num_heads, c.width // c.num_heads
    source = hf_config.source if hf_config is not None else "checkpoint"
    rules = [*_conv("encoder.conv1", ("conv1",)), *_conv("encoder.conv2", ("conv2",)),
             _positions(c.max_source_positions, c.width, source),
             *_layer_norm("encoder.layer_norm", ("encoder_norm",)),
             same("decoder.embed_tokens.weight", ("embed", "token", "embedding")),
             same("decoder.embed_positions.weight", ("embed", "position", "embedding")),
             *_layer_norm("decoder.layer_norm", ("decoder_norm",))]
    for side, depth in (("encoder", c.depth), ("decoder", c.decoder_depth or c.depth)):
      for i in range(depth):
        hf, ours = f"{side}.layers.{i}", (f"{side}_blocks_{i}",)
        rules += [*_attention(f"{hf}.self_attn", ours + ("attention",), heads, head_dim),
                  *_layer_norm(f"{hf}.self_attn_layer_norm", ours + ("attention_norm",)),
                  *_dense(f"{hf}.fc1", ours + ("mlp", "fc1")),
                  *_dense(f"{hf}.fc2", ours + ("mlp", "fc2")),
                  *_layer_norm(f"{hf}.final_layer_norm", ours + ("mlp_norm",))]
        if side == "decoder":
          rules += [*_attention(f"{hf}.encoder_attn", ours + ("cross_attention",), heads,
                                head_dim),
                    *_layer_norm(f"{hf}.encoder_attn_layer_norm",
                                 ours + ("cross_attention_norm",))]
    return rules
