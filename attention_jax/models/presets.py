"""Named architectures: `create(name, **overrides)` and `param_count(name, **overrides)`.

Each standard preset has exactly the architecture, and so the parameter count, of the
reference implementation named beside it (pinned in tests/models/test_presets.py).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from attention_jax import kernels
from attention_jax.models.bert import Bert
from attention_jax.models.encoder_decoder import EncoderDecoder
from attention_jax.models.gpt import GPT
from attention_jax.models.transformer_xl import TransformerXL
from attention_jax.models.vit import ViT


@dataclasses.dataclass(frozen=True)
class Preset:
  family: type
  options: dict
  reference: str


_BERT_BASE = dict(width=768, depth=12, num_heads=12, mlp_dim=3072)
_GPT2 = dict(vocab_size=50257, max_len=1024, dropout_rate=0.1, attention_dropout_rate=0.1)

PRESETS: dict[str, Preset] = {
    "bert-base": Preset(Bert, _BERT_BASE, "google-research/bert BERT-Base, uncased (HF "
                        "BertModel with pooler)"),
    "bert-large": Preset(Bert, dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),
                         "google-research/bert BERT-Large, uncased (HF BertModel)"),
    "minilm-l6": Preset(Bert, dict(width=384, depth=6, num_heads=12, mlp_dim=1536),
                        "sentence-transformers/all-MiniLM-L6-v2 (HF BertModel)"),
    "gpt2-small": Preset(GPT, dict(_GPT2, width=768, depth=12, num_heads=12, mlp_dim=3072),
                         "openai/gpt-2 124M (HF GPT2Model, tied LM head)"),
    "gpt2-medium": Preset(GPT, dict(_GPT2, width=1024, depth=24, num_heads=16, mlp_dim=4096),
                          "openai/gpt-2 355M (HF GPT2Model, tied LM head)"),
    "transformer-base": Preset(
        EncoderDecoder, dict(vocab_size=37000, width=512, encoder_depth=6, decoder_depth=6,
                             num_heads=8, mlp_dim=2048, dropout_rate=0.1),
        "Vaswani et al. 2017 base: fairseq transformer_wmt_en_de with "
        "--share-all-embeddings and the paper's 37,000-token joint BPE vocabulary"),
    "transformer-xl-base": Preset(
        TransformerXL, dict(vocab_size=267735, width=410, depth=16, num_heads=10, head_dim=41,
                            mlp_dim=2100, mem_len=150, cutoffs=(20000, 40000, 200000)),
        "kimiyoung/transformer-xl pytorch run_wt103_base.sh (WikiText-103 base, 151M)"),
    "vit-ti16": Preset(ViT, dict(width=192, depth=12, num_heads=3, mlp_dim=768),
                       "ViT-Ti/16 at 224px, ImageNet-1k head (timm vit_tiny_patch16_224)"),
    "vit-b16": Preset(ViT, _BERT_BASE, "ViT-B/16 at 224px, ImageNet-1k head (Dosovitskiy et "
                      "al.; timm vit_base_patch16_224)"),
    # Tiny presets for tests and laptops.
    "bert-tiny": Preset(Bert, dict(vocab_size=128, max_len=64, width=32, depth=2,
                                   num_heads=4, mlp_dim=64), "test size"),
    "gpt-tiny": Preset(GPT, dict(vocab_size=128, max_len=64, width=32, depth=2, num_heads=4,
                                 mlp_dim=64), "test size"),
    "transformer-tiny": Preset(EncoderDecoder, dict(vocab_size=128, max_len=64, width=32,
                                                    encoder_depth=2, decoder_depth=2,
                                                    num_heads=4, mlp_dim=64), "test size"),
    "transformer-xl-tiny": Preset(TransformerXL, dict(vocab_size=128, width=32, depth=2,
                                                      num_heads=4, mlp_dim=64, mem_len=16,
                                                      cutoffs=(32, 64)), "test size"),
    "vit-tiny": Preset(ViT, dict(num_classes=10, image_size=16, channels=1, patch_size=4,
                                 width=32, depth=2, num_heads=4, mlp_dim=64), "test size"),
}


def names() -> list[str]:
  return sorted(PRESETS)


def create(name: str, **overrides):
  """The Flax module of preset `name`, with any field overridden (e.g. kernel="flash")."""
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(names())}.")
  preset = PRESETS[name]
  fields = {f.name for f in dataclasses.fields(preset.family)} - {"parent", "name"}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"preset {name!r} (a {preset.family.__name__}) has no option(s) "
                     f"{unknown}; valid: {', '.join(sorted(fields))}.")
  options = {**preset.options, **overrides}
  if "kernel" in options:
    kernels.get(options["kernel"])  # unknown names fail here, listing the valid ones
  return preset.family(**options)


def param_count(name: str, **overrides) -> int:
  """Number of parameters of preset `name`, from shapes alone (no weights allocated)."""
  model = create(name, **overrides)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *model.example_inputs()))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"])))
