"""Transformer model families (Flax Linen) and named presets."""

from attention_jax.models.bert import Bert
from attention_jax.models.encoder_decoder import EncoderDecoder
from attention_jax.models.generation import beam_search, generate, greedy_decode, sample_logits
from attention_jax.models.gpt import GPT
from attention_jax.models.presets import PRESETS, create, names, param_count
from attention_jax.models.transformer_xl import TransformerXL, adaptive_log_probs
from attention_jax.models.vit import ViT

__all__ = ["Bert", "EncoderDecoder", "GPT", "PRESETS", "TransformerXL", "ViT",
           "adaptive_log_probs", "beam_search", "create", "generate", "greedy_decode", "names",
           "param_count", "sample_logits"]
