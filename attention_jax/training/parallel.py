"""Parallelism: one jit-compiled step over a named device mesh, for every layout.

    mesh axes (outer -> inner):   data      fsdp      expert    sequence   tensor
    batch  [batch, length]        batch     batch     batch     (length)   -
    params [embed, heads|mlp|vocab]  -      embed     -         -          heads, mlp, vocab
    experts [expert, embed, mlp]  -         embed     expert    -          mlp

`config.mesh.{data,fsdp,expert,sequence,tensor}` size the axes (-1: the remaining devices;
their product is the device count). Parameters carry logical axis names
(`attention_jax.layers.partitioning`), and the rule table `config.mesh.rules` maps each
logical name to mesh axes ("" = replicated). So data parallelism is data=N; FSDP (ZeRO-3) is
fsdp=N (parameters and optimizer state split on `embed`, gathered per layer by XLA); Megatron
tensor parallelism is tensor=N; context parallelism is sequence=N with the `ring` kernel;
expert parallelism is expert=N (a mixture's experts split over it, the batch too, so that
the dense layers are data parallel there; XLA moves the tokens to their experts' devices).
`parallelism="pmap"` is the users' name for pure data parallelism and runs this same step.

The runner owns the mesh and the shardings; the training loop calls init / shard_batch /
compile_train / compile_eval / fetch / host_params and never branches on the layout.
Checkpoints hold the global (sharded) arrays; Orbax restores them into whatever layout the
resuming run uses.
"""

from __future__ import annotations

import math
import sys

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from attention_jax.layers import partitioning

MODES = ("mesh", "pmap")
AXES = ("data", "fsdp", "expert", "sequence", "tensor")  # outermost (across hosts) to innermost
DEFAULT_RULES = {  # logical axis -> mesh axes, comma-separated ("" = replicated)
    "batch": "data,fsdp,expert", "length": "sequence", "embed": "fsdp", "heads": "tensor",
    "kv": "", "mlp": "tensor", "vocab": "tensor", "layers": "",
    "expert": "expert"}  # a mixture's experts' leading axis


def default_config() -> ml_collections.ConfigDict:
  """`config.mesh`: axis sizes and the logical-axis rule table."""
  c = ml_collections.ConfigDict()
  c.data, c.fsdp, c.expert, c.sequence, c.tensor = -1, 1, 1, 1, 1
  c.rules = ml_collections.ConfigDict(DEFAULT_RULES)
  return c


def _devices(config) -> list:
  devices = jax.devices()
  if config.num_devices:
    if jax.process_count() > 1:
      raise ValueError("config.num_devices must be 0 (all devices) in a multi-process run.")
    if config.num_devices > len(devices):
      raise ValueError(f"config.num_devices={config.num_devices} but only {len(devices)} "
                       "devices are available.")
    devices = devices[:config.num_devices]
  return devices


def axis_sizes(config, num_devices: int) -> dict[str, int]:
  """Sizes of the mesh axes, with one -1 resolved to the remaining devices. Fails naming the
  axis when they do not multiply to the device count."""
  mesh = config.mesh
  sizes = {axis: int(mesh[axis]) for axis in AXES}
  if config.parallelism == "pmap" and any(sizes[a] not in (1, -1) for a in AXES[1:]):
    raise ValueError("parallelism='pmap' is data parallelism only; for fsdp / expert / "
                     "sequence / tensor axes use parallelism='mesh'.")
  if config.parallelism == "pmap":
    sizes = {axis: 1 for axis in AXES} | {"data": -1}
  free = [axis for axis, size in sizes.items() if size == -1]
  bad = [f"{axis}={size}" for axis, size in sizes.items() if size == 0 or size < -1]
  if bad or len(free) > 1:
    raise ValueError(f"config.mesh sizes must be positive, with at most one -1 (the remaining "
                     f"devices); got {', '.join(bad or [f'{a}=-1' for a in free])}.")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(f"config.mesh: {num_devices} devices do not split over "
                       f"{_describe(sizes)}: the fixed axes multiply to {fixed}, which does "
                       f"not divide {num_devices}.")
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(f"config.mesh {_describe(sizes)} has {fixed} devices but the run has "
                     f"{num_devices}; make the product equal the device count (or set one "
                     "axis to -1).")
  return sizes


def _describe(sizes) -> str:
  return " x ".join(f"{axis}={size}" for axis, size in sizes.items())


def make_mesh(config, devices=None) -> Mesh:
  """The run's mesh over all processes' devices (or the first config.num_devices), or over
  `devices` (experiments.plan: a TPU topology's devices, compiled for without the chips)."""
  devices = _devices(config) if devices is None else list(devices)
  sizes = axis_sizes(config, len(devices))
  inner = sizes["sequence"] * sizes["tensor"]
  if jax.process_count() > 1 and jax.local_device_count() % inner:
    raise ValueError(f"sequence x tensor = {inner} must divide the {jax.local_device_count()} "
                     "devices of each process (each host then feeds whole batch shards).")
  grid = np.array(devices).reshape([sizes[axis] for axis in AXES])
  return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def rules(config) -> dict[str, tuple[str, ...]]:
  """`config.mesh.rules` as logical name -> mesh axes, checked against the mesh's axes."""
  table = {}
  for name, value in config.mesh.rules.items():
    axes = tuple(a.strip() for a in str(value or "").split(",") if a.strip())
    unknown = [a for a in axes if a not in AXES]
    if unknown:
      raise ValueError(f"config.mesh.rules.{name}={value!r} names unknown mesh axes "
                       f"{unknown}; the axes are {', '.join(AXES)}.")
    table[name] = axes
  return table


def mesh_spec(logical: P, shape, table, mesh: Mesh, what: str) -> P:
  """The mesh PartitionSpec of an array with logical axes `logical`. A mesh axis is used once
  per array (the first dimension that asks for it); size-1 axes are dropped. Fails naming the
  array, dimension and axis when a dimension does not divide."""
  used, spec = set(), []
  for dim, name in enumerate(logical):
    axes = tuple(a for a in table.get(name, ()) if mesh.shape[a] > 1 and a not in used)
    size = math.prod(mesh.shape[a] for a in axes)
    if shape[dim] % size:
      raise ValueError(
          f"{what} has {name}={shape[dim]} (dimension {dim} of {tuple(shape)}), which the "
          f"mesh axes {'x'.join(axes)} of size {size} do not divide. Choose sizes that "
          f"divide, or change the rule (e.g. --config.mesh.rules.{name}=).")
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*spec)


def tree_shardings(shapes, table, mesh: Mesh):
  """NamedShardings of a tree of arrays (parameters, optimizer state, train state)."""
  logical = partitioning.logical_axes(shapes)
  return jax.tree_util.tree_map_with_path(
      lambda path, axes, leaf: NamedSharding(mesh, mesh_spec(
          axes, leaf.shape, table, mesh, jax.tree_util.keystr(path, simple=True, separator="/"))),
      logical, shapes)


def report_memory(compiled, what: str, devices):
  """Prints XLA's memory estimate; fails fast if it exceeds a device's known capacity."""
  analysis = memory_analysis(compiled)
  if analysis is None:
    return
  need = analysis["total"]
  print(f"compiled {what}: {need / 2 ** 20:,.1f} MB per device "
        f"({analysis['temporary'] / 2 ** 20:,.1f} MB temporaries)", file=sys.stderr)
  device = next(d for d in devices if d.process_index == jax.process_index())
  try:
    limit = (device.memory_stats() or {}).get("bytes_limit")
  except (AttributeError, RuntimeError):  # a topology's device, compiled for, not present
    limit = None
  if limit and need > limit:
    raise MemoryError(f"{what} needs {need / 2 ** 30:.2f} GiB per device but "
                      f"{device.device_kind} has {limit / 2 ** 30:.2f} GiB: lower "
                      "batch_size, raise grad_accum_steps, use precision='bfloat16', "
                      "model.remat, or shard the parameters (config.mesh.fsdp / tensor).")


def memory_analysis(compiled) -> dict | None:
  """Bytes per device of a compiled program: arguments, outputs, temporaries, total."""
  try:
    analysis = compiled.memory_analysis()
  except (AttributeError, NotImplementedError):
    return None
  if analysis is None:
    return None
  return {"argument": analysis.argument_size_in_bytes,
          "output": analysis.output_size_in_bytes,
          "temporary": analysis.temp_size_in_bytes,
          "alias": analysis.alias_size_in_bytes,
          "total": (analysis.temp_size_in_bytes + analysis.argument_size_in_bytes
                    + analysis.output_size_in_bytes - analysis.alias_size_in_bytes)}


class Runner:
  """The mesh, the shardings of the state and the batch, and the compiled steps.

  `init_fn(*init_args)` builds the train state; `init_args` (a fine-tuning run's base
  parameters) are passed as arguments, never baked into the program as constants.
  """

  def __init__(self, config, init_fn, init_args=(), devices=None):
    self.mesh = make_mesh(config, devices)
    self.devices = list(self.mesh.devices.flat)
    self.rules = rules(config)
    self.init_fn, self.init_args = init_fn, init_args
    self.grad_accum_steps = config.grad_accum_steps
    batch_axes = tuple(a for a in self.rules.get("batch", ()) if self.mesh.shape[a] > 1)
    shards = math.prod(self.mesh.shape[a] for a in batch_axes)
    per_host = config.batch_size // jax.process_count()
    if config.batch_size % (shards * config.grad_accum_steps) or per_host % max(
        shards // jax.process_count(), 1):
      raise ValueError(
          f"batch_size {config.batch_size} does not split evenly over the batch axes "
          f"({_describe({a: self.mesh.shape[a] for a in batch_axes}) or 'none'}) x "
          f"grad_accum_steps={config.grad_accum_steps}. Choose a batch_size that is a "
          f"multiple of {shards * config.grad_accum_steps}.")
    eval_batch = config.get("eval_batch_size", 0) or config.batch_size
    if eval_batch % shards:
      raise ValueError(f"eval_batch_size {eval_batch} does not split evenly over the batch "
                       f"axes ({_describe({a: self.mesh.shape[a] for a in batch_axes})}); "
                       f"choose a multiple of {shards}.")
    self.batch_spec = P(batch_axes or None)
    self.shapes = jax.eval_shape(init_fn, *init_args)
    self.state_sharding = tree_shardings(self.shapes, self.rules, self.mesh)
    self.replicated = NamedSharding(self.mesh, P())

  def init(self):
    args, self.init_args = self.init_args, ()  # not kept alive after use
    return jax.jit(self.init_fn, out_shardings=self.state_sharding)(*args)

  def batch_sharding(self, x):
    """Examples split over the batch axes; the other dimensions whole."""
    return NamedSharding(self.mesh, P(*self.batch_spec, *([None] * (np.ndim(x) - 1))))

  def shard_batch(self, batch):
    """This host's part of the global batch -> global arrays on the mesh (asynchronous)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        self.batch_sharding(x), np.asarray(x)), batch)

  def compile_train(self, step, example_batch, rng):
    """AOT-compiles step(state, batch, rng) -> (state, metrics) for this layout, from shapes
    alone (this host's `example_batch` gives the batch's)."""
    hosts = jax.process_count()
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        (np.shape(x)[0] * hosts,) + np.shape(x)[1:], np.asarray(x).dtype,
        sharding=self.batch_sharding(x)), example_batch)
    jitted = jax.jit(step, in_shardings=(self.state_sharding, _shardings_of(batch),
                                         self.replicated),
                     out_shardings=(self.state_sharding, self.replicated),
                     donate_argnums=(0,))
    rng = jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=self.replicated)
    with jax.set_mesh(self.mesh):
      compiled = jitted.lower(self.shapes, batch, rng).compile()
    report_memory(compiled, "train step", self.devices)
    return compiled

  def compile_eval(self, step):
    """step(params, batch) -> summed metrics; compiled at its first call per batch shape."""
    jitted = jax.jit(step, out_shardings=self.replicated)

    def run(params, batch):  # both already on the mesh
      with jax.set_mesh(self.mesh):
        return jitted(params, batch)
    self.eval_step = run

  def fetch(self, tree):
    """Device -> host: this host's copy of replicated outputs, as numpy (one transfer)."""
    return jax.device_get(jax.tree.map(lambda x: x.addressable_data(0), tree))

  def host_params(self, state):
    """Full parameters on every host (gathered when they are sharded)."""
    return multihost_utils.process_allgather(state.model_params(), tiled=True)


def _shardings_of(tree):
  return jax.tree.map(lambda x: x.sharding, tree)
