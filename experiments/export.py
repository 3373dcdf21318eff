r"""Export a training workdir's BERT or GPT as a Hugging Face checkpoint (config.json +
model.safetensors + tokenizer.json), LoRA adapters merged into the weights.

    python -m experiments.export --workdir=runs/minilm_lora --out=exported/minilm_wordnet
"""

import sys

from absl import app, flags, logging

from attention_jax import models, pretrained
from attention_jax.layers import lora
from attention_jax.training import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
_OUT = flags.DEFINE_string("out", None, "Directory to write the checkpoint to.", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or a step.")


def export(workdir: str, out: str, checkpoint: str = "latest") -> str:
  """Writes the workdir's model (adapters merged) to `out`; returns `out`."""
  _, task, _, params, step = workdir_lib.load(workdir, checkpoint)
  model = task.model()  # as configured (the loaded one has dropout off for evaluation)
  if model.config.lora is not None:
    params = lora.merge(params, model.config.lora)
    model = models.with_options(model, lora=None)
  tokenizer = task.tokenizer if hasattr(task.tokenizer, "tokenizer") else None  # not bytes
  pretrained.export(model, params, out, tokenizer)
  print(f"exported step {step} of {workdir} to {out}", file=sys.stderr)
  return out


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  export(_WORKDIR.value, _OUT.value, _CHECKPOINT.value)


if __name__ == "__main__":
  app.run(main)
