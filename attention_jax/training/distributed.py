"""Multi-host start-up: `jax.distributed.initialize()` when launched on a cluster.

Recognised launches, in order: explicit coordinator flags / environment variables
(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); SLURM with more than one task
(srun sets the rest); Cloud TPU pods (detected by JAX itself). A single process does nothing.
"""

from __future__ import annotations

import os

import jax


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Joins the cluster if this is a multi-process launch; returns whether it did."""
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and "JAX_PROCESS_ID" in os.environ:
    process_id = int(os.environ["JAX_PROCESS_ID"])
  slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
  tpu_pod = "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"]
  if not (coordinator_address or slurm or tpu_pod):
    return False
  if coordinator_address and (num_processes is None or process_id is None):
    raise ValueError("a coordinator address needs num_processes and process_id too "
                     "(flags or JAX_NUM_PROCESSES / JAX_PROCESS_ID).")
  # CPU devices need a collectives library across processes (GPUs and TPUs bring their own);
  # set before anything touches a backend.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True
