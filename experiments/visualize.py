r"""Pictures of a model's attention on a text, one PNG per layer (every head), and of a training
workdir's curves.

    python -m experiments.visualize --workdir=runs/quickstart --text="In the beginning"
    python -m experiments.visualize --pretrained=all-MiniLM-L6-v2 --text="The cat sat."

`--workdir`: a training workdir whose inputs are text (a GPT, Llama or BERT trained here);
also draws its training curves. `--pretrained`: a checkpoint name or directory (BERT, GPT-2,
Llama). Writes to `--out_dir` (default: WORKDIR/pictures, or runs/pictures).
"""

import os

from absl import app, flags, logging
import jax.numpy as jnp

from attention_jax import viz
from attention_jax.pretrained import hub
from attention_jax.training import tasks as tasks_lib
from attention_jax.training import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string("workdir", "", "A training workdir.")
_PRETRAINED = flags.DEFINE_string("pretrained", "", "A pretrained checkpoint name or directory.")
_TEXT = flags.DEFINE_string("text", "In the beginning God created the heaven and the earth.",
                            "The text to attend over.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 48, "Tokens drawn, at most.")
_OUT_DIR = flags.DEFINE_string("out_dir", "", "Where the PNGs go.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if bool(_WORKDIR.value) == bool(_PRETRAINED.value):
    raise app.UsageError("pass exactly one of --workdir and --pretrained.")
  if _WORKDIR.value:
    _, task, model, params, step = workdir_lib.load(_WORKDIR.value)
    tokenizer = task.tokenizer if isinstance(
        task, (tasks_lib.LanguageModelTask, tasks_lib.TextClassificationTask)) else None
    if tokenizer is None:
      raise app.UsageError(f"{_WORKDIR.value} reads no text (its task has no tokenizer).")
    name = f"{os.path.basename(os.path.normpath(_WORKDIR.value))}, step {step}"
  else:
    model, params, tokenizer = hub.load(_PRETRAINED.value, kernel="dot_product")
    name = _PRETRAINED.value
  out_dir = _OUT_DIR.value or os.path.join(_WORKDIR.value or "runs", "pictures")
  os.makedirs(out_dir, exist_ok=True)
  inputs, labels = viz.tokens_and_labels(tokenizer, _TEXT.value, _MAX_TOKENS.value)
  weights = viz.attention_weights(model, params, *[jnp.asarray(x) for x in inputs])
  for layer, layer_weights in enumerate(weights):
    path = viz.plot_attention(layer_weights[0], labels,
                              os.path.join(out_dir, f"attention_layer_{layer}.png"),
                              title=f"{name}: layer {layer}")
    print(f"wrote {path}")
  if _WORKDIR.value:
    print("wrote", viz.plot_training_curves(_WORKDIR.value,
                                            os.path.join(out_dir, "training_curves.png")))
    if getattr(model.config, "num_experts", None):
      print("wrote", viz.plot_expert_load(_WORKDIR.value,
                                          os.path.join(out_dir, "expert_load.png")))


if __name__ == "__main__":
  app.run(main)
