"""Optimizer: AdamW with a weight-decay mask, warmup + cosine/linear decay, clipping."""

from __future__ import annotations

import jax
import optax

from attention_jax.layers.partitioning import in_stack

SCHEDULES = ("cosine", "linear", "constant")


def learning_rate_schedule(cfg, num_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to cfg.lr over cfg.warmup_steps, then cfg.schedule decay to
  cfg.lr * cfg.final_lr_fraction at num_steps."""
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"optimizer.schedule must be one of {SCHEDULES}, got {cfg.schedule!r}.")
  warmup = min(cfg.warmup_steps, num_steps)
  decay_steps = max(num_steps - warmup, 1)
  final = cfg.lr * cfg.final_lr_fraction
  if cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.final_lr_fraction)
  elif cfg.schedule == "linear":
    decay = optax.linear_schedule(cfg.lr, final, decay_steps)
  else:
    decay = optax.constant_schedule(cfg.lr)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


def decay_mask(params):
  """Weight decay on matrices (kernels, embeddings), not on biases or LayerNorm scales (on
  stacked blocks, not counting their leading `layers` axis)."""
  def is_matrix(path, x):
    return x.ndim - in_stack(path) >= 2
  return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(cfg, num_steps: int,
                   scale: optax.GradientTransformation | None = None
                   ) -> optax.GradientTransformation:
  """The optax chain for `config.optimizer`; `inject_hyperparams` exposes the live lr
  (`current_learning_rate`). `scale`, if given, rescales the updates last (layer-wise
  learning-rate decay)."""
  if cfg.name != "adamw":
    raise ValueError(f"optimizer.name must be 'adamw', got {cfg.name!r}.")

  @optax.inject_hyperparams
  def adamw(learning_rate):
    return optax.adamw(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                       weight_decay=cfg.weight_decay, mask=decay_mask)

  parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
  parts.append(adamw(learning_rate_schedule(cfg, num_steps)))
  return optax.chain(*parts, *([scale] if scale is not None else []))


def current_learning_rate(opt_state):
  """The learning rate `make_optimizer`'s chain applies at this step."""
  return optax.tree_utils.tree_get(opt_state, "learning_rate",
                                   filtering=lambda _, value: isinstance(value, jax.Array))
