"""Every config and variant loads and has the fields the trainer and overrides rely on."""

import importlib
import pathlib

import pytest

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
TRAINING = ["default", "gpt_kjv", "bert_wordnet", "vit_fashion_mnist", "translate_kjv_rv",
            "xl_kjv", "finetune_minilm_wordnet", "sft_chat", "llama_kjv_web", "lra_listops",
            "lra_text", "lra_image", "lra_pathfinder", "moe_kjv", "whisper_kjv_speech"]
VARIANTS = {"default": [None], "gpt_kjv": [None, "small", "tiny", "gpu"],
            "bert_wordnet": [None, "tiny"], "vit_fashion_mnist": [None, "tiny"],
            "translate_kjv_rv": [None, "tiny"], "xl_kjv": [None, "tiny"],
            "finetune_minilm_wordnet": [None, "lora", "linear_probe", "top_k_layers", "scratch",
                                        "lora,tiny"],
            "sft_chat": [None, "full", "tiny", "bible", "bible_full"],
            "llama_kjv_web": [None, "tiny"], "lra_listops": [None, "lra", "tiny"],
            "lra_text": [None, "lra", "tiny"], "lra_image": [None, "lra", "tiny"],
            "lra_pathfinder": [None, "lra", "tiny"],
            "moe_kjv": [None, "dense_active", "dense_total", "tiny", "deepseek_v3"],
            "whisper_kjv_speech": [None, "tiny", "memorise"]}
COMMON = ("seed", "batch_size", "num_train_steps", "log_every_steps", "eval_every_steps",
          "checkpoint_every_steps")


def test_every_training_config_is_listed():
  files = {p.stem for p in CONFIG_DIR.glob("*.py")} - {"__init__", "common",
                                                       "benchmark_attention"}
  assert files == set(TRAINING)


@pytest.mark.parametrize("name,variant", [(n, v) for n in TRAINING for v in VARIANTS[n]])
def test_config_has_common_fields_and_a_kernel(name, variant):
  config = importlib.import_module(f"configs.{name}").get_config(variant)
  for field in COMMON:
    assert config[field] >= 0
  assert isinstance(config.model.kernel, str) and config.model.kernel
  assert config.batch_size % 8 == 0  # divides over 8 devices


@pytest.mark.parametrize("name", ["gpt_kjv", "bert_wordnet", "vit_fashion_mnist",
                                  "translate_kjv_rv", "xl_kjv", "finetune_minilm_wordnet",
                                  "sft_chat", "llama_kjv_web", "lra_listops", "lra_text",
                                  "lra_image", "lra_pathfinder", "moe_kjv",
                                  "whisper_kjv_speech"])
def test_unknown_variant_is_refused(name):
  with pytest.raises(ValueError, match="unknown variant 'huge'"):
    importlib.import_module(f"configs.{name}").get_config("huge")


def test_the_deepseek_v3_plan_variant_is_deepseek_v3_as_published():
  """configs/moe_kjv.py:deepseek_v3 changes how DeepSeek-V3 runs, never what it is: its
  model fields give the preset's 671,026,419,200 parameters (scanned above 3 dense layers)."""
  from attention_jax import models
  fields = dict(importlib.import_module("configs.moe_kjv").get_config("deepseek_v3").model)
  preset = fields.pop("preset")
  assert preset == "deepseek-v3" and fields["scan_layers"]
  assert models.param_count(preset, **fields) == 671_026_419_200
