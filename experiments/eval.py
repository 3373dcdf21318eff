r"""Evaluate a training workdir's latest or best checkpoint on a split, with the trainer's
own evaluation (so a translation workdir reports BLEU here too).

    python -m experiments.eval --workdir=/tmp/quickstart --checkpoint=best --split=test
"""

import jax
from absl import app, flags, logging

from attention_jax.data import pipeline
from attention_jax.training import train
from attention_jax.training import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or a step.")
_SPLIT = flags.DEFINE_string("split", "validation", "Dataset split to evaluate.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config, task, model, params, step = workdir_lib.load(_WORKDIR.value, _CHECKPOINT.value,
                                                       _SPLIT.value)
  _, data = task.datasets()
  batches = pipeline.eval_batches(data, config.eval_batch_size or config.batch_size)
  metrics = train.evaluate(task, jax.jit(train.make_eval_step(task, model)), params, batches,
                           model, prefix=_SPLIT.value)
  print(f"checkpoint {step}, split {_SPLIT.value}:")
  for name, value in metrics.items():
    print(f"  {name}: {value:.4f}")


if __name__ == "__main__":
  app.run(main)
