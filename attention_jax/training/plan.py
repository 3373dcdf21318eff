"""Planning a run before the hardware exists: compile the training step ahead of time for a
mesh (on the local or fake devices) and read what it needs per device from XLA.

`plan(config)` returns bytes per device (parameters, optimizer state, arguments,
temporaries), FLOPs and HBM traffic per step; `predict` turns them into a step time and MFU
for a stated accelerator peak (the roofline: the step takes at least its FLOPs at the peak
FLOP/s, and at least its memory traffic at the peak bandwidth). No parameter is allocated.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from attention_jax.layers import moe
from attention_jax.training import metrics as metrics_lib
from attention_jax.training import parallel
from attention_jax.training.setup import setup


def _bytes_per_device(shapes, shardings) -> int:
  """Bytes of one device's shards of the arrays `shapes` laid out as `shardings`."""
  sizes = jax.tree.map(lambda s, sh: math.prod(sh.shard_shape(s.shape)) * s.dtype.itemsize,
                       shapes, shardings)
  return int(sum(jax.tree.leaves(sizes)))


def topology_devices(name: str) -> list:
  """The devices of a TPU slice such as "v5e:2x4" or "v5p:2x2x2", for compiling without
  the chips (needs libtpu: `pip install "jax[tpu]"`, on any machine)."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    return list(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)
  except Exception as error:  # the TPU plugin's errors have no common type
    raise ValueError(f"cannot describe the TPU topology {name!r} ({error}). Install libtpu "
                     "(pip install 'jax[tpu]') and name a slice such as v5e:2x4 or "
                     "v5p:2x2x2.") from None


def model_flops_per_token(config, parameters: int, seq_len: int) -> float:
  """Training FLOPs per token counted from the model (not from the compiled program):
  6 x the matmul parameters a token uses (all of them, less the routed experts it does not
  choose, and less the token table, a lookup, unless the logits reuse it) plus attention's
  6 x layers x seq_len x heads x (query-key + value head dims) (PaLM's count: forward and
  backward, no discount for a causal mask). `config`: a TransformerConfig."""
  matmuls = parameters - moe.unchosen_expert_params(config)
  if not config.tie_embeddings:
    matmuls -= config.vocab_size * config.width
  head_dim = config.head_dim or config.width // config.num_heads
  if config.kv_lora_rank:  # MLA: the query-key and value heads differ
    score_dim, value_dim = config.qk_nope_head_dim + config.qk_rope_head_dim, config.v_head_dim
  else:
    score_dim = value_dim = head_dim
  attention = 6 * config.depth * seq_len * config.num_heads * (score_dim + value_dim)
  return 6.0 * matmuls + attention


class DoesNotFit(ValueError):
  """The compiler refused the step: it needs more memory per device than the device has."""


def plan(config, topology: str | None = None) -> dict:
  """Compiles `config`'s train step for its mesh; returns what one device needs. With a
  TPU `topology` the step is compiled by the TPU compiler for that slice, which refuses a
  step that does not fit its HBM (`DoesNotFit`, with the compiler's numbers)."""
  try:
    built = setup(config, devices=topology_devices(topology) if topology else None)
  except jax.errors.JaxRuntimeError as error:
    if "RESOURCE_EXHAUSTED" not in str(error):
      raise
    raise DoesNotFit(
        f"the step does not fit{f' on {topology}' if topology else ''}: "
        f"{str(error).splitlines()[0].split('RESOURCE_EXHAUSTED: ')[-1]} Shard it further "
        "(fsdp, expert, tensor), use remat, a smaller batch or the capacity dispatch."
    ) from None
  runner, task, compiled = built.runner, built.task, built.train_step
  shapes, shardings = runner.shapes, runner.state_sharding
  memory = parallel.memory_analysis(compiled) or {}
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  parameters = int(sum(np.prod(x.shape) for x in jax.tree.leaves(
      (shapes.params, shapes.frozen))))
  model_config = built.model.config
  per_token = (model_flops_per_token(model_config, parameters, config.dataset.seq_len)
               if task.unit == "tokens" and hasattr(model_config, "num_experts") else None)
  return {
      "mesh": dict(runner.mesh.shape),
      "device_kind": runner.devices[0].device_kind,
      "devices": runner.mesh.size,
      "parameters": parameters,
      "unchosen_expert_parameters": moe.unchosen_expert_params(model_config),
      "model_flops_per_token": per_token,
      "parameter_bytes": _bytes_per_device((shapes.params, shapes.frozen),
                                           (shardings.params, shardings.frozen)),
      "optimizer_bytes": _bytes_per_device(shapes.opt_state, shardings.opt_state),
      "argument_bytes": memory.get("argument"),
      "temporary_bytes": memory.get("temporary"),
      "total_bytes": memory.get("total"),
      "flops": metrics_lib.step_flops(compiled),
      "bytes_accessed": float(cost.get("bytes accessed", 0.0)) or None,
      "items_per_step": config.batch_size * task.items_per_example(),
      "unit": task.unit,
  }


def step_flops(result: dict) -> float:
  """FLOPs per step per device for the roofline: the larger of XLA's count and the model's
  (XLA counts a loop's body once, so scanned layers and the blocked dropless dispatch
  undercount)."""
  per_token = result.get("model_flops_per_token") or 0.0
  return max(result["flops"] or 0.0,
             per_token * result["items_per_step"] / result["devices"])


def predict(result: dict, peak_tflops: float, hbm_gbps: float) -> dict:
  """Roofline step time (s), MFU and items/s for an accelerator with these peaks."""
  compute = step_flops(result) / (peak_tflops * 1e12)
  traffic = (result["bytes_accessed"] or 0.0) / (hbm_gbps * 1e9)
  step = max(compute, traffic)
  return {"step_seconds": step, "mfu": compute / step if step else None,
          "bound": "compute" if compute >= traffic else "memory bandwidth",
          "items_per_second": result["items_per_step"] / step if step else None}


def describe(result: dict, peak_tflops: float, hbm_gbps: float, hbm_gib: float) -> str:
  """The plan as the lines experiments.plan prints."""
  gib = lambda b: ("?" if b is None else f"{b / 2 ** 30:,.2f} GiB" if b >= 2 ** 30
                   else f"{b / 2 ** 20:,.2f} MiB")
  mesh = " x ".join(f"{axis}={size}" for axis, size in result["mesh"].items())
  unchosen = result["unchosen_expert_parameters"]
  active = (f" ({result['parameters'] - unchosen:,} active per token: the experts a token "
            "does not choose left out)" if unchosen else "")
  lines = [f"mesh: {mesh} ({result['devices']} x {result['device_kind']}); "
           f"{result['parameters']:,} parameters{active}",
           "per device:",
           f"  parameters         {gib(result['parameter_bytes'])}",
           f"  optimizer state    {gib(result['optimizer_bytes'])}",
           f"  arguments (all)    {gib(result['argument_bytes'])}",
           f"  temporaries        {gib(result['temporary_bytes'])}  (activations, gradients,"
           " workspace)",
           f"  total              {gib(result['total_bytes'])}"]
  if result["total_bytes"] is not None and hbm_gib:
    fits = result["total_bytes"] <= hbm_gib * 2 ** 30
    lines.append(f"  fits in {hbm_gib:g} GiB: {'yes' if fits else 'NO'}")
  flops = result["flops"]
  lines.append(f"  FLOPs per step     {'?' if flops is None else f'{flops:.4g}'}  (XLA's count; "
               "custom-call kernels count 0)")
  per_token = result.get("model_flops_per_token")
  if per_token:
    per_device = per_token * result["items_per_step"] / result["devices"]
    lines.append(f"  model FLOPs        {per_token:.4g} per token (6 x the parameters a token "
                 f"uses + attention), {per_device:.4g} per step"
                 + (f" = {per_device / flops:.2f}x XLA's count" if flops else ""))
  if flops or per_token:
    guess = predict(result, peak_tflops, hbm_gbps)
    counted = "the model's" if step_flops(result) > (flops or 0.0) else "XLA's"
    lines.append(f"roofline at {peak_tflops:g} TFLOP/s and {hbm_gbps:g} GB/s per device, "
                 f"{counted} FLOPs (a bound: real steps are slower): >= "
                 f"{guess['step_seconds'] * 1e3:,.1f} "
                 f"ms/step ({guess['bound']} bound), MFU <= {guess['mfu']:.0%}, <= "
                 f"{guess['items_per_second']:,.0f} {result['unit']}/s")
  return "\n".join(lines)
