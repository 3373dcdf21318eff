r"""Train (or resume) a model: flags only, then `attention_jax.training.train_and_evaluate`.

    python -m experiments.train --config=configs/default.py --workdir=/tmp/run
    python -m experiments.train --config=configs/gpt_kjv.py:tiny --workdir=/tmp/tiny \
        --config.optimizer.lr=3e-4
"""

from absl import app, flags, logging
from ml_collections import config_flags

from attention_jax.training import RUN_ERRORS, distributed, train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs; an "
                               "existing run there is resumed.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for "
                                   "a multi-process launch outside SLURM / TPU pods.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the launch.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the console
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  try:
    results = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except RUN_ERRORS as e:  # the message says what to do; the traceback would bury it
    raise SystemExit(f"error: {e}") from None
  if "sample" in results:
    print("\n--- sample ---\n" + results.pop("sample") + "\n--------------")
  for name, value in results.items():
    print(f"{name}: {value:.4f}" if isinstance(value, float) else f"{name}: {value}")


if __name__ == "__main__":
  app.run(main)
