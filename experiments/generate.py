r"""Generate text from a language model, streaming it to the console as it is produced.

    python -m experiments.generate --init_from=/tmp/quickstart --prompt="And God said, " \
        --max_new_tokens=300 --temperature=0.8 --top_p=0.95
    python -m experiments.generate --init_from=checkpoints/smollm2 --chat   # a chat session

`--init_from` is a training workdir (GPT or Llama) or a Hugging Face checkpoint directory
(Llama, Mistral, Qwen2 or GPT-2 with a tokenizer). `--chat` renders the conversation with the
checkpoint's chat template, reads your turns from stdin (an empty line ends the session) and
stops each reply at the end-of-turn token. Throughput (prefill and decode tokens/s) is
reported on stderr after each reply.
"""

import itertools
import sys
import time

import jax
from absl import app, flags, logging

from attention_jax import models
from attention_jax.training import workdir as workdir_lib

_INIT_FROM = flags.DEFINE_string("init_from", None, "A training workdir or a Hugging Face "
                                 "checkpoint directory.", required=True)
_PROMPT = flags.DEFINE_string("prompt", "In the beginning", "Text to continue.")
_CHAT = flags.DEFINE_bool("chat", False, "Chat with the model through its chat template.")
_SYSTEM = flags.DEFINE_string("system", "", "A system message for --chat.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate (per reply).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "0 for greedy decoding.")
_TOP_K = flags.DEFINE_integer("top_k", None, "Sample from the k most likely tokens.")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus sampling mass.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_KERNEL = flags.DEFINE_string("kernel", "auto", "Attention kernel (Hugging Face checkpoints).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "A workdir's 'latest', 'best' or a "
                                  "step.")


def stream(model, params, tokenizer, prompt_ids, stop_tokens, rng, out=sys.stdout) -> list:
  """Generates from `prompt_ids`, printing text as it is produced; returns the new ids."""
  new, printed = [], ""
  start = time.perf_counter()
  steps = models.generate_stream(
      model, params, [prompt_ids], max_new_tokens=_MAX_NEW.value, rng=rng,
      temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value,
      stop_tokens=tuple(stop_tokens), vocab_limit=tokenizer.vocab_size)
  first_at = None
  for tokens in steps:
    first_at = first_at or time.perf_counter()
    token = int(tokens[0])
    if token in stop_tokens:
      break
    new.append(token)
    text = tokenizer.decode(new)
    if not text.endswith("\ufffd"):  # a character whose bytes are not all out yet
      out.write(text[len(printed):])
      out.flush()
      printed = text
  rest = tokenizer.decode(new)[len(printed):] if new else ""
  out.write(rest + "\n")  # what a character cut short left, then the line's end
  out.flush()
  end = time.perf_counter()
  decode_rate = (len(new) - 1) / (end - first_at) if len(new) > 1 else float("nan")
  print(f"[{len(prompt_ids)} prompt tokens in {first_at - start:.2f} s (compile included); "
        f"{len(new)} new tokens, decode {decode_rate:.1f} tokens/s]", file=sys.stderr)
  return new


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    model, params, tokenizer = workdir_lib.load_decoder(_INIT_FROM.value, _CHECKPOINT.value,
                                                        _KERNEL.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  rng = jax.random.key(_SEED.value)
  if not _CHAT.value:
    print(_PROMPT.value, end="")
    stream(model, params, tokenizer, list(tokenizer.encode(_PROMPT.value)), tokenizer.stop_ids,
           rng)
    return
  if tokenizer.chat_template is None:
    raise app.UsageError(f"{_INIT_FROM.value} has no chat template; use --prompt.")
  messages = [{"role": "system", "content": _SYSTEM.value}] if _SYSTEM.value else []
  for turn in itertools.count():
    print("> ", end="", flush=True)
    line = sys.stdin.readline().strip()
    if not line:
      return
    messages.append({"role": "user", "content": line})
    ids = tokenizer.encode_chat(messages, add_generation_prompt=True)
    reply = stream(model, params, tokenizer, ids, tokenizer.stop_ids,
                   jax.random.fold_in(rng, turn))
    messages.append({"role": "assistant", "content": tokenizer.decode(reply)})


if __name__ == "__main__":
  app.run(main)
