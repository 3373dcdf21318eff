r"""Sample text from a language-model workdir.

    python -m experiments.generate --workdir=/tmp/quickstart --prompt="And God said, " \
        --max_new_tokens=300 --temperature=0.8 --top_p=0.95
"""

import jax
import numpy as np
from absl import app, flags, logging

from attention_jax import models
from attention_jax.training import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "A language-model training workdir.",
                               required=True)
_PROMPT = flags.DEFINE_string("prompt", "In the beginning", "Text to continue.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "0 for greedy decoding.")
_TOP_K = flags.DEFINE_integer("top_k", None, "Sample from the k most likely tokens.")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus sampling mass.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or a step.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config, task, model, params, _ = workdir_lib.load(_WORKDIR.value, _CHECKPOINT.value)
  if not isinstance(model, models.GPT):
    raise app.UsageError(f"{_WORKDIR.value} trains a {type(model).__name__}, not a GPT.")
  prompt = task.tokenizer.encode(_PROMPT.value)[None]
  tokens = models.generate(model, params, prompt, max_new_tokens=_MAX_NEW.value,
                           rng=jax.random.key(_SEED.value), temperature=_TEMPERATURE.value,
                           top_k=_TOP_K.value, top_p=_TOP_P.value)
  print(_PROMPT.value + task.tokenizer.decode(np.asarray(tokens[0])))


if __name__ == "__main__":
  app.run(main)
