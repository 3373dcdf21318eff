"""The train state, the step that updates it, and the part of it a checkpoint holds."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import optax
from jax import lax

from attention_jax.training import finetune, optim


@flax.struct.dataclass
class TrainState:
  """`params` are the trained parameters; `frozen` the rest (not trained, not checkpointed;
  empty unless config.finetune.mode freezes some, see training.finetune)."""
  step: jnp.ndarray
  params: dict
  opt_state: optax.OptState
  frozen: dict

  def model_params(self) -> dict:
    return finetune.combine(self.params, self.frozen)


def checkpointed(state: TrainState) -> dict:
  """What a checkpoint holds: the state (global arrays, in any layout) without its frozen
  parameters."""
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def make_train_step(task, model, optimizer, grad_accum_steps: int):
  """(state, batch, rng) -> (state, metrics): one jit-able step over the global batch (the
  mesh's shardings make it data / FSDP / tensor / sequence parallel)."""

  def micro_grads(params, frozen, batch, rng):
    def loss_fn(p, b, r):  # differentiated with respect to the trained parameters only
      return task.loss(model, finetune.combine(p, frozen), b, r, deterministic=False)

    if grad_accum_steps == 1:
      (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
      return loss, grads
    micro = jax.tree.map(lambda x: x.reshape((grad_accum_steps, -1) + x.shape[1:]), batch)

    def body(carry, xs):
      mb, i = xs
      (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, mb, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (loss, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), _ = lax.scan(body, zeros, (micro, jnp.arange(grad_accum_steps)))
    return jax.tree.map(lambda x: x / grad_accum_steps, (loss, grads))

  def step(state, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    loss, grads = micro_grads(state.params, state.frozen, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"train/loss": loss, "train/grad_norm": optax.tree.norm(grads),
               "train/param_norm": optax.tree.norm(params),
               "train/learning_rate": optim.current_learning_rate(opt_state)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step
