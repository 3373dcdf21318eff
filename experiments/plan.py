r"""Plan a run before the hardware exists: compile its step for a mesh and print the memory,
FLOPs, step time and MFU per device.

    python -m experiments.plan --config=configs/gpt_kjv.py:gpt2_medium --devices=8 \
        --config.mesh.data=1 --config.mesh.fsdp=8 --config.model.remat=full
    python -m experiments.plan --config=configs/gpt_kjv.py:gpt2_medium --topology=v5p:2x2x2 \
        --config.mesh.data=1 --config.mesh.fsdp=8 --peak_tflops=459 --hbm_gbps=2765 \
        --hbm_gib=95

`--devices=N` compiles for N fake CPU devices (set before JAX starts); `--topology` with
the TPU compiler for a TPU slice, on any machine with libtpu installed (`pip install
"jax[tpu]"`): XLA:CPU's memory figures do not model an accelerator's (it neither reuses
buffers as tightly nor gains from remat), the TPU compiler's do. Without either, the local
devices. Bad meshes fail before compiling, naming the axis.
"""

import os
import sys

for _arg in sys.argv:  # fake devices must be configured before jax is imported
  if _arg.startswith("--devices="):
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                               f"device_count={int(_arg.split('=', 1)[1])}")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from attention_jax.training import plan  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                          lock_config=True)
flags.DEFINE_integer("devices", 0, "Plan on this many fake CPU devices (0: the local ones).")
_TOPOLOGY = flags.DEFINE_string("topology", None, "A TPU slice to compile for without the "
                                "chips, e.g. v5e:2x4 or v5p:2x2x2 (needs libtpu).")
_PEAK = flags.DEFINE_float("peak_tflops", 989.0, "The accelerator's dense bf16 peak per "
                           "device, TFLOP/s (H100 SXM: 989; TPU v5p: 459).")
_HBM = flags.DEFINE_float("hbm_gbps", 3350.0, "Its memory bandwidth per device, GB/s.")
_HBM_GIB = flags.DEFINE_float("hbm_gib", 80.0, "Its memory per device, GiB.")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    result = plan.plan(_CONFIG.value, _TOPOLOGY.value)
  except plan.DoesNotFit as error:
    print(f"fits: NO, {error}")
    return 1
  print(plan.describe(result, _PEAK.value, _HBM.value, _HBM_GIB.value))
  return 0


if __name__ == "__main__":
  app.run(main)
