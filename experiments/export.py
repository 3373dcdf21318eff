r"""Export a training workdir's BERT, GPT or Llama as a Hugging Face checkpoint (config.json,
model.safetensors, tokenizer.json and a chat template if it has one), LoRA adapters merged.

    python -m experiments.export --workdir=runs/minilm_lora --out=exported/minilm_wordnet
"""

from absl import app, flags, logging

from attention_jax.training import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
_OUT = flags.DEFINE_string("out", None, "Directory to write the checkpoint to.", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or a step.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  workdir_lib.export(_WORKDIR.value, _OUT.value, _CHECKPOINT.value)


if __name__ == "__main__":
  app.run(main)
