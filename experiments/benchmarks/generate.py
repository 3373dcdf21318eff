r"""Generation throughput: ours vs Hugging Face transformers' `generate`, in one process.

    python -m experiments.benchmarks.generate                      # llama-3.2-1b shape, CPU
    python -m experiments.benchmarks.generate --preset=llama-tiny --new_tokens=8   # smoke
    python -m experiments.benchmarks.generate --mla   # latent attention's cache, no torch

Random weights of the preset's shape, exported by us and loaded by transformers, so both
run the same model (and must produce the same greedy tokens: checked). For each dtype:
prefill tokens/s (the prompt's forward pass, cache filled) and decode tokens/s (the new
tokens after the first), the medians of `--repeats` runs with the two libraries
interleaved, after a warm-up run that compiles ours. Needs `pip install torch==2.13.0
transformers==5.24.0` (the test extras).

With --mla, no transformers: a small random DeepSeek-shaped model (`--mla_width`; DeepSeek-V3's
proportions) decodes with the absorbed latent cache and with materialised keys and values,
beside a GQA Llama of the same width, depth and heads; the table gives each one's cache bytes
per token (all layers) and decode tokens/s, interleaved, and checks that the two MLA modes
generate the same tokens.
"""

from __future__ import annotations

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from attention_jax import models, pretrained
from attention_jax.models import generation
from experiments.benchmarks import harness

_PRESET = flags.DEFINE_string("preset", "llama-3.2-1b", "A Llama-family preset.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Weight and compute dtypes.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 64, "Prompt tokens (batch 1).")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 32, "Tokens generated.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Interleaved runs per library.")
_KERNEL = flags.DEFINE_string("kernel", "auto", "Our attention kernel.")
_MLA = flags.DEFINE_bool("mla", False, "Latent attention's decode cache instead (no torch).")
_MLA_WIDTH = flags.DEFINE_integer("mla_width", 512, "Width of the --mla models (8 heads).")


def _timed(fn):
  """(seconds, what `fn()` returned)."""
  out = []
  return harness.timed(lambda: out.append(fn())), out[0]


def ours(model, params, prompt, new_tokens):
  """(prefill seconds, generate seconds, tokens) with compiled programs."""
  decoder = models.with_options(model, decode=True)
  tokens, pads = jnp.asarray(prompt), jnp.zeros((1,), jnp.int32)
  prefill = jax.jit(generation._prefill, static_argnums=(0, 4))
  run = lambda: jax.block_until_ready(prefill(decoder, params, tokens, pads, new_tokens))
  prefill_s, _ = _timed(run)
  generate = lambda: np.asarray(models.generate(
      model, params, prompt, max_new_tokens=new_tokens, rng=jax.random.key(0),
      temperature=0.0, bucket=False))
  total_s, out = _timed(generate)
  return prefill_s, total_s, out[0]


def theirs(hf_model, prompt, new_tokens):
  import torch
  ids = torch.tensor(prompt)
  with torch.no_grad():
    prefill_s, _ = _timed(lambda: hf_model(input_ids=ids, use_cache=True))
    total_s, out = _timed(lambda: hf_model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
        min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None))
  return prefill_s, total_s, out[0, ids.shape[1]:].numpy()


def cache_bytes_per_token(model, length: int) -> float:
  """Bytes of the decoding cache per token of a `length`-token cache, all layers."""
  cache = generation.init_cache(models.with_options(model, decode=True),
                                jnp.zeros((1, length), jnp.int32))
  return sum(leaf.nbytes for leaf in jax.tree.leaves(cache) if leaf.ndim) / length


def latent_attention_table(prompt, new: int):
  """Cache bytes per token and decode tokens/s: MLA absorbed, MLA materialised, GQA."""
  width, heads = _MLA_WIDTH.value, 8
  head = width // heads  # DeepSeek-V3: 7168 wide, 128 heads of 128 + 64 (rotary), rank 512
  shape = dict(vocab_size=1024, max_len=4096, width=width, depth=4, num_heads=heads,
               mlp_dim=4 * width, kernel=_KERNEL.value)
  latent = dict(kv_lora_rank=4 * head, q_lora_rank=12 * head, qk_nope_head_dim=head,
                qk_rope_head_dim=head // 2, v_head_dim=head)
  candidates = {
      "MLA, absorbed latent cache": models.create("deepseek-tiny", **shape, **latent),
      "MLA, materialised K/V cache": models.create("deepseek-tiny", **shape, **latent,
                                                   mla_decode="materialised"),
      f"GQA Llama, {heads // 4} KV heads of {head}": models.create(
          "llama-tiny", **shape, num_kv_heads=heads // 4)}
  length = prompt.shape[1] + new
  params = {name: jax.jit(lambda m=m: m.init(jax.random.key(0), *m.example_inputs())[
      "params"])() for name, m in candidates.items()}
  runs = harness.interleaved({name: lambda name=name, m=m: ours(m, params[name], prompt, new)
                              for name, m in candidates.items()}, _REPEATS.value)
  absorbed, materialised = (runs[name][-1][2] for name in list(candidates)[:2])
  print(f"latent attention: width {width}, {heads} heads, depth 4, prompt "
        f"{prompt.shape[1]}, {new} new tokens, batch 1, float32; {harness.machine()}")
  print(f"the two MLA caches generate the same tokens: {np.array_equal(absorbed, materialised)}")
  decode_s = {name: harness.median([r[1] - r[0] for r in results])
              for name, results in runs.items()}
  timed = min(decode_s.values()) > 0  # else a generation timed no slower than its prefill
  if not timed:
    print(f"note: {new} new tokens are too few to time against the prefill's noise; "
          "decode rates are left out (raise --new_tokens).")
  print("| model | cache bytes / token | decode tokens/s | ratio to absorbed (decode) |")
  print("|---|---|---|---|")
  first = next(iter(decode_s.values()))
  for name, model in candidates.items():
    rate = f"{(new - 1) / decode_s[name]:.1f}" if timed else "-"
    ratio = f"{first / decode_s[name]:.2f}x" if timed else "-"
    print(f"| {name} | {cache_bytes_per_token(model, length):.0f} | {rate} | {ratio} |")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  new = _NEW_TOKENS.value
  if _MLA.value:
    prompt = np.random.default_rng(0).integers(3, 1000, (1, _PROMPT_LEN.value), np.int32)
    return latent_attention_table(prompt, new)
  import torch
  import transformers
  torch.set_num_threads(os.cpu_count())
  vocab = models.create(_PRESET.value).config.vocab_size
  prompt = np.random.default_rng(0).integers(3, min(vocab, 1000), (1, _PROMPT_LEN.value))
  prompt = prompt.astype(np.int32)
  print(f"{_PRESET.value}, prompt {_PROMPT_LEN.value}, {new} new tokens, batch 1, "
        f"{os.cpu_count()} CPU threads; jax {jax.__version__}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}")
  print("| dtype | library | prefill tokens/s | decode tokens/s | ours / theirs (decode) |")
  print("|---|---|---|---|---|")
  for dtype in _DTYPES.value:
    model = models.create(_PRESET.value, dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(dtype),
                          kernel=_KERNEL.value)
    params = jax.jit(lambda: model.init(jax.random.key(0), *model.example_inputs())["params"]
                     )()
    with tempfile.TemporaryDirectory() as directory:
      pretrained.export(model, params, directory)
      hf_model = transformers.AutoModelForCausalLM.from_pretrained(
          directory, dtype=getattr(torch, dtype)).eval()
    runs = harness.interleaved(  # the warm-up compiles ours and warms theirs
        {"ours": lambda: ours(model, params, prompt, new),
         "transformers": lambda: theirs(hf_model, prompt, new)}, _REPEATS.value)
    if not np.array_equal(runs["ours"][-1][2], runs["transformers"][-1][2]):
      print(f"note: greedy tokens differ in {dtype} (rounding): ours "
            f"{runs['ours'][-1][2][:8]}..., theirs {runs['transformers'][-1][2][:8]}...")
    rates = {}
    for name, results in runs.items():
      prefill = harness.median([r[0] for r in results])
      decode = harness.median([r[1] - r[0] for r in results])
      rates[name] = (_PROMPT_LEN.value / prefill, (new - 1) / decode)
    for name, (prefill_rate, decode_rate) in rates.items():
      ratio = (f"{rates['ours'][1] / rates['transformers'][1]:.2f}x" if name == "ours"
               else "")
      print(f"| {dtype} | {name} | {prefill_rate:.0f} | {decode_rate:.1f} | {ratio} |")
    del hf_model, params


if __name__ == "__main__":
  app.run(main)
