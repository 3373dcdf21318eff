"""Data parallelism: `jax.pmap` (the default) or `jax.jit` over a `jax.sharding.Mesh`.

Both runners offer the same methods, so the training loop does not branch:
init / shard_batch / compile_train / compile_eval (sets eval_step) / host_value /
host_metrics / params / host_params / to_checkpoint / from_checkpoint.
Checkpoints always hold one (unreplicated) copy of the state. `init_fn(*init_args)` builds
the state; `init_args` (the base parameters of a fine-tuning run) are passed as arguments,
never baked into the program as constants.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MODES = ("pmap", "mesh")
AXIS = "batch"


def _devices(config):
  devices = jax.local_devices() if config.parallelism == "pmap" else jax.devices()
  if config.num_devices:
    if config.num_devices > len(devices):
      raise ValueError(f"config.num_devices={config.num_devices} but only {len(devices)} "
                       "devices are available.")
    devices = devices[:config.num_devices]
  per_host = config.batch_size // jax.process_count()
  local = len(devices) // jax.process_count() if config.parallelism == "mesh" else len(devices)
  if per_host % (local * config.grad_accum_steps):
    raise ValueError(
        f"batch_size {config.batch_size} does not split evenly: {jax.process_count()} "
        f"host(s) x {local} device(s) x grad_accum_steps={config.grad_accum_steps}. Choose a "
        "batch_size that is a multiple of "
        f"{jax.process_count() * local * config.grad_accum_steps}.")
  return devices


def report_memory(compiled, what: str, devices):
  """Prints XLA's memory estimate; fails fast if it exceeds a device's known capacity."""
  try:
    analysis = compiled.memory_analysis()
  except (AttributeError, NotImplementedError):
    return
  if analysis is None:
    return
  need = (analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
          + analysis.output_size_in_bytes - analysis.alias_size_in_bytes)
  print(f"compiled {what}: {need / 2 ** 20:,.1f} MB per device "
        f"({analysis.temp_size_in_bytes / 2 ** 20:,.1f} MB temporaries)", file=sys.stderr)
  device = next(d for d in devices if d.process_index == jax.process_index())
  stats = device.memory_stats()
  limit = (stats or {}).get("bytes_limit")
  if limit and need > limit:
    raise MemoryError(f"{what} needs {need / 2 ** 30:.2f} GiB per device but "
                      f"{device.device_kind} has {limit / 2 ** 30:.2f} GiB: lower "
                      "batch_size, raise grad_accum_steps, use precision='bfloat16' or "
                      "parallelism='mesh' with fsdp=True.")


class PmapRunner:
  """Replicated state, per-device steps, gradients averaged with `lax.pmean`."""

  def __init__(self, config, init_fn, init_args=()):
    if jax.process_count() > 1 and config.num_devices:
      raise ValueError("config.num_devices must be 0 (all devices) in a multi-process run.")
    self.devices = _devices(config)
    self.n = len(self.devices)
    # Across processes pmap must span every device (its collectives are then global).
    self.pmap_devices = None if jax.process_count() > 1 else self.devices
    self.init_fn, self.init_args = init_fn, init_args
    self.grad_accum_steps = config.grad_accum_steps

  def init(self):
    args, self.init_args = self.init_args, ()  # not kept alive after use
    return jax.pmap(lambda _, args: self.init_fn(*args), in_axes=(0, None),
                    devices=self.pmap_devices)(np.arange(self.n), args)

  def shard_batch(self, batch):
    return jax.tree.map(lambda x: np.asarray(x).reshape((self.n, -1) + np.shape(x)[1:]), batch)

  def compile_train(self, make_step, task, model, optimizer, state, example_batch, rng):
    step = make_step(task, model, optimizer, self.grad_accum_steps, axis_name=AXIS)
    pmapped = jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None), devices=self.pmap_devices,
                       donate_argnums=(0,))
    if jax.process_count() > 1:
      # An ahead-of-time compiled pmap expects global shapes across processes; let the first
      # call compile it (the memory report is per device, so one process's mesh run gives it).
      return pmapped
    compiled = pmapped.lower(state, self.shard_batch(example_batch), rng).compile()
    report_memory(compiled, "train step", self.devices)
    return compiled

  def compile_eval(self, make_step, task, model):
    self.eval_step = jax.pmap(make_step(task, model, axis_name=AXIS), axis_name=AXIS,
                              devices=self.pmap_devices)

  def host_value(self, tree):
    """One device's copy of replicated outputs, as numpy."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], tree)

  def host_metrics(self, metrics):
    return {k: float(v) for k, v in self.host_value(metrics).items()}

  def params(self, state):
    return state.model_params()

  def host_params(self, state):
    return self.host_value(state.model_params())

  def to_checkpoint(self, state):
    """One copy of the state; across hosts a replicated global array (what Orbax saves)."""
    if jax.process_count() == 1:
      return jax.tree.map(lambda x: x[0], state)
    sharding = NamedSharding(Mesh(np.array(jax.devices()), (AXIS,)), P())
    return jax.tree.map(lambda x: jax.make_array_from_single_device_arrays(
        x.shape[1:], sharding, [shard.data[0] for shard in x.addressable_shards]), state)

  def from_checkpoint(self, restored):
    single = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), restored)
    return jax.pmap(lambda _: single, devices=self.pmap_devices)(np.arange(self.n))


def fsdp_spec(shape, n: int) -> P:
  """Shard the largest axis divisible by n over the data axis; replicate small leaves."""
  candidates = [(size, axis) for axis, size in enumerate(shape) if size % n == 0 and size >= n]
  if not candidates or np.prod(shape) < 1024:
    return P()
  axis = max(candidates)[1]
  return P(*([None] * axis + [AXIS]))


class MeshRunner:
  """One jit-compiled program over a 1-D device mesh: the batch is sharded over it, the
  state replicated or, with config.fsdp, sharded (FSDP / ZeRO-3 style)."""

  def __init__(self, config, init_fn, init_args=()):
    self.devices = _devices(config)
    self.mesh = Mesh(np.array(self.devices), (AXIS,))
    self.init_fn, self.init_args = init_fn, init_args
    self.grad_accum_steps = config.grad_accum_steps
    shapes = jax.eval_shape(init_fn, *init_args)
    n = len(self.devices)
    spec = (lambda s: fsdp_spec(s.shape, n)) if config.fsdp else (lambda s: P())
    self.state_sharding = jax.tree.map(lambda s: NamedSharding(self.mesh, spec(s)), shapes)
    self.data_sharding = NamedSharding(self.mesh, P(AXIS))
    self.replicated = NamedSharding(self.mesh, P())

  def init(self):
    args, self.init_args = self.init_args, ()  # not kept alive after use
    return jax.jit(self.init_fn, out_shardings=self.state_sharding)(*args)

  def shard_batch(self, batch):
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        self.data_sharding, np.asarray(x)), batch)

  def compile_train(self, make_step, task, model, optimizer, state, example_batch, rng):
    step = make_step(task, model, optimizer, self.grad_accum_steps)
    jitted = jax.jit(step, in_shardings=(self.state_sharding, self.data_sharding,
                                         self.replicated),
                     out_shardings=(self.state_sharding, self.replicated),
                     donate_argnums=(0,))
    compiled = jitted.lower(state, self.shard_batch(example_batch), rng).compile()
    report_memory(compiled, "train step", self.devices)
    return compiled

  def compile_eval(self, make_step, task, model):
    self.eval_step = jax.jit(make_step(task, model),
                             in_shardings=(self.state_sharding.model_params(),
                                           self.data_sharding),
                             out_shardings=self.replicated)

  def host_value(self, tree):
    """This host's copy of replicated outputs, as numpy."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)

  def host_metrics(self, metrics):
    return {k: float(v) for k, v in self.host_value(metrics).items()}

  def params(self, state):
    return state.model_params()

  def host_params(self, state):
    """Full parameters on every host (gathered when FSDP shards them)."""
    return multihost_utils.process_allgather(state.model_params(), tiled=True)

  def to_checkpoint(self, state):
    return state

  def from_checkpoint(self, restored):
    """Orbax restored the arrays with the shardings of the abstract state it was given."""
    return restored


def make_runner(config, init_fn, init_args=()):
  return (PmapRunner if config.parallelism == "pmap" else MeshRunner)(config, init_fn,
                                                                       init_args)
