r"""Runs every (task, kernel) cell of the Long Range Arena suite and writes the accuracy table.

    python -m experiments.lra_sweep --root=runs/lra [--tasks=listops,text] [--kernels=linear]
    python -m experiments.lra_sweep --root=runs/lra_tpu --variant=lra   # LRA's sizes

Each cell trains configs/lra_<task>.py[:variant] with `model.kernel` set to the kernel, in
`ROOT/<task>/<kernel>`, then scores the best checkpoint (by validation loss) on the test split.
A cell that already has its result (`ROOT/<task>/<kernel>/result.json`) is skipped, so an
interrupted sweep resumes where it stopped (and an interrupted cell resumes from its last
checkpoint: SIGTERM saves one and stops the sweep). After every cell it writes ROOT/results.json
and ROOT/results.md: test accuracy per task and kernel, wall time per cell, and LRA's published
ListOps figures beside ours. `--table_only` writes them from the cells finished so far without
training any.
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from experiments import lra

_ROOT = flags.DEFINE_string("root", "runs/lra", "Where the cells' workdirs and tables go.")
_TASKS = flags.DEFINE_list("tasks", list(lra.TASKS), f"Any of {', '.join(lra.TASKS)}.")
_KERNELS = flags.DEFINE_list("kernels", list(lra.KERNELS), "Registry kernel names.")
_VARIANT = flags.DEFINE_string("variant", "", "Config variant: '' (CPU-sized), 'lra', 'tiny'.")
_STEPS = flags.DEFINE_integer("steps", 0, "Override num_train_steps (0: the config's).")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data directory ('': the default).")
_TABLE_ONLY = flags.DEFINE_bool("table_only", False, "Write the tables of the finished cells; "
                                 "train nothing.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  tasks, kernels = list(_TASKS.value), list(_KERNELS.value)
  os.makedirs(_ROOT.value, exist_ok=True)
  results = [r for task in tasks for kernel in kernels
             if (r := lra.saved_result(_ROOT.value, task, kernel)) is not None]
  for task in [] if _TABLE_ONLY.value else tasks:
    for kernel in kernels:
      if lra.saved_result(_ROOT.value, task, kernel) is not None:
        continue
      print(f"=== {task} x {kernel}", flush=True)
      result = lra.run_cell(_ROOT.value, task, kernel, variant=_VARIANT.value,
                            steps=_STEPS.value, data_dir=_DATA_DIR.value)
      if result is None:
        print(f"SIGTERM: {task} x {kernel} stopped at its last checkpoint; run the same "
              "command to resume.", flush=True)
        lra.write_tables(_ROOT.value, results, tasks, kernels)
        return
      results.append(result)
      print(f"    test accuracy {results[-1]['test_accuracy']:.2f}%", flush=True)
      lra.write_tables(_ROOT.value, results, tasks, kernels)
  print(lra.write_tables(_ROOT.value, results, tasks, kernels))


if __name__ == "__main__":
  app.run(main)
