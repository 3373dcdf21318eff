r"""Peak host memory of loading and exporting a Hugging Face checkpoint, against its size.

    python -m experiments.benchmarks.checkpoint                    # llama-3.2-1b in bfloat16
    python -m experiments.benchmarks.checkpoint --preset=llama-tiny --dtype=float32  # smoke

Writes random weights of the preset's shape with our exporter (sharded at 2 GiB), then, each
in a fresh process so that peaks do not mix: our streaming `pretrained.load`, and the naive
path (`safetensors.numpy.load_file` of every shard, then conversion and device arrays) for
comparison; and our `pretrained.export` of the loaded model. Reports each process's peak
resident memory (ru_maxrss) as a multiple of the weights' bytes, and an empty process's
(Python + JAX) for reference.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile

from absl import app, flags, logging

_PRESET = flags.DEFINE_string("preset", "llama-3.2-1b", "A Llama-family preset.")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "The checkpoint's dtype.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: the measurement to run.")
_DIR = flags.DEFINE_string("dir", None, "Internal: the checkpoint directory.")


def _peak_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def work(what: str, directory: str):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from attention_jax import models, pretrained
  if what == "write":
    model = models.create(_PRESET.value, param_dtype=jnp.dtype(_DTYPE.value))
    params = jax.jit(lambda: model.init(jax.random.key(0), *model.example_inputs())["params"])()
    pretrained.export(model, params, directory, max_shard_bytes=2 * 2 ** 30)
  elif what == "load":
    _, params, _ = pretrained.load(directory)
    jax.block_until_ready(params)
  elif what == "naive":  # everything read first, then converted, then made device arrays
    from safetensors.numpy import load_file
    from attention_jax.pretrained import convert, formats, hub
    from attention_jax.pretrained import safetensors_io
    tensors = {}
    for path in safetensors_io.Tensors(directory).files:
      tensors.update(load_file(path))
    config, _, _ = hub.read_checkpoint(directory)
    fmt = formats.for_model_type(config["model_type"])
    model = fmt.family(hub.model_config(fmt.family, fmt.fields(config, tensors)))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *model.example_inputs()))
    from flax import traverse_util
    expected = {p: s.shape for p, s in traverse_util.flatten_dict(shapes["params"]).items()}
    params = convert.tensors_to_params(tensors, fmt.rules(model, False, False), expected,
                                       fmt.ignore)
    params = jax.block_until_ready(jax.tree.map(jnp.asarray, params))
  elif what == "export":
    model, params, _ = pretrained.load(directory)
    pretrained.export(model, params, directory + "_again", max_shard_bytes=2 * 2 ** 30)
  elif what == "empty":
    jnp.zeros(1).block_until_ready()
  del np
  print(json.dumps({"peak": _peak_bytes()}))


def measure(what: str, directory: str) -> int:
  result = subprocess.run([sys.executable, "-m", "experiments.benchmarks.checkpoint",
                           f"--worker={what}", f"--dir={directory}",
                           f"--preset={_PRESET.value}", f"--dtype={_DTYPE.value}"],
                          capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f"{what} failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])["peak"]


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if _WORKER.value:
    work(_WORKER.value, _DIR.value)
    return
  from attention_jax import models
  with tempfile.TemporaryDirectory() as root:
    directory = os.path.join(root, "checkpoint")
    measure("write", directory)
    size = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)
               if f.endswith(".safetensors"))
    count = models.param_count(_PRESET.value)
    print(f"{_PRESET.value}: {count:,} parameters in {_DTYPE.value}, "
          f"{size / 2 ** 30:.2f} GiB of safetensors shards")
    print("| process | peak RSS (GiB) | peak / weights |")
    print("|---|---|---|")
    for what in ("empty", "load", "naive", "export"):
      peak = measure(what, directory)
      print(f"| {what} | {peak / 2 ** 30:.2f} | {peak / size:.2f} |")


if __name__ == "__main__":
  app.run(main)
