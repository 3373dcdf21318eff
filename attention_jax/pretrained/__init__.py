"""Pretrained checkpoints: Hugging Face-format import and export (BERT, GPT-2, and Llama,
Mistral, Qwen2 and Qwen3 causal LMs with their chat templates), and sentence embeddings.

    model, params, tokenizer = attention_jax.pretrained.load("all-MiniLM-L6-v2")
    embeddings = attention_jax.pretrained.encode(["A sentence.", "Another one."])
"""

from attention_jax.pretrained.chat import ChatTemplateError, ChatTokenizer
from attention_jax.pretrained.encode import encode
from attention_jax.pretrained.hub import (KNOWN, export, load, read_checkpoint, resolve,
                                          weights_sha256)
from attention_jax.pretrained.tokenizer import PretrainedTokenizer
from attention_jax.pretrained.whisper_tokenizer import WhisperTokenizer

__all__ = ["KNOWN", "ChatTemplateError", "ChatTokenizer", "PretrainedTokenizer",
           "WhisperTokenizer", "encode", "export", "load", "read_checkpoint", "resolve",
           "weights_sha256"]
