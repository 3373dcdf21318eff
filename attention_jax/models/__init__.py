"""Transformer model families (Flax Linen), each built from one config object, and named
presets."""

from attention_jax.layers.config import with_options
from attention_jax.models.bert import Bert, BertConfig
from attention_jax.models.deepseek import Deepseek, DeepseekConfig
from attention_jax.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from attention_jax.models.gemma import Gemma, GemmaConfig
from attention_jax.models.generation import (beam_search, generate, generate_stream,
                                             greedy_decode, sample_logits)
from attention_jax.models.gpt import GPT, GPTConfig
from attention_jax.models.llama import Llama, LlamaConfig
from attention_jax.models.mixtral import Mixtral, MixtralConfig
from attention_jax.models.presets import (PRESETS, active_param_count, config_class, create,
                                          names, param_count)
from attention_jax.models.transformer_xl import (TransformerXL, TransformerXLConfig,
                                                 adaptive_log_probs)
from attention_jax.models.vit import ViT, ViTConfig
from attention_jax.models.whisper import Whisper, WhisperConfig

__all__ = ["Bert", "BertConfig", "Deepseek", "DeepseekConfig", "EncoderDecoder", "EncoderDecoderConfig", "GPT", "GPTConfig",
           "Gemma", "GemmaConfig", "Llama", "LlamaConfig", "Mixtral", "MixtralConfig", "PRESETS", "TransformerXL", "TransformerXLConfig", "ViT",
           "ViTConfig", "Whisper", "WhisperConfig", "active_param_count", "adaptive_log_probs", "beam_search",
           "config_class", "create", "generate", "generate_stream", "greedy_decode", "names",
           "param_count", "sample_logits", "with_options"]
