r"""Generation throughput: ours vs Hugging Face transformers' `generate`, in one process.

    python -m experiments.benchmarks.generate                      # llama-3.2-1b shape, CPU
    python -m experiments.benchmarks.generate --preset=llama-tiny --new_tokens=8   # smoke

Random weights of the preset's shape, exported by us and loaded by transformers, so both
run the same model (and must produce the same greedy tokens: checked). For each dtype:
prefill tokens/s (the prompt's forward pass, cache filled) and decode tokens/s (the new
tokens after the first), the medians of `--repeats` runs with the two libraries
interleaved, after a warm-up run that compiles ours. Needs `pip install torch==2.13.0
transformers==5.24.0` (the test extras).
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


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import torch
  import transformers
  torch.set_num_threads(os.cpu_count())
  vocab = models.create(_PRESET.value).config.vocab_size
  prompt = np.random.default_rng(0).integers(3, min(vocab, 1000), (1, _PROMPT_LEN.value))
  prompt = prompt.astype(np.int32)
  new = _NEW_TOKENS.value
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
