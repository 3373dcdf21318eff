r"""Evaluate a training workdir's latest or best checkpoint on a split, with the trainer's
own evaluation (so a translation workdir reports BLEU here too).

    python -m experiments.eval --workdir=/tmp/quickstart --checkpoint=best --split=test
"""

from absl import app, flags, logging

from attention_jax.training import evaluation

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' or a step.")
_SPLIT = flags.DEFINE_string("split", "validation", "Dataset split to evaluate.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  step, metrics = evaluation.evaluate_workdir(_WORKDIR.value, _CHECKPOINT.value, _SPLIT.value)
  print(f"checkpoint {step}, split {_SPLIT.value}:")
  for name, value in metrics.items():
    print(f"  {name}: {value:.4f}")


if __name__ == "__main__":
  app.run(main)
