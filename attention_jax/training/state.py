"""The train state, the step that updates it, and the part of it a checkpoint holds."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import optax
from jax import lax

from attention_jax.layers import moe
from attention_jax.training import finetune, optim
from attention_jax.training.tasks.base import EXPERT_LOAD


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
  mesh's shardings make it data / FSDP / tensor / sequence parallel). A mixture of experts
  with router_bias_update_rate moves its correction biases by the step's expert loads
  after the optimizer's update, which does not touch them (`moe.update_correction_biases`)."""
  bias_rate = getattr(model.config, "router_bias_update_rate", 0.0)
  first_stacked = getattr(model.config, "first_k_dense_replace", 0)  # a stack's first layer

  def micro_grads(params, frozen, batch, rng):
    def loss_fn(p, b, r):  # differentiated with respect to the trained parameters only
      return task.loss(model, finetune.combine(p, frozen), b, r, deterministic=False)

    def loss_and_grads(b, r):
      """(loss, grads, router metrics: the task's "router/..." sums, a mixture's)."""
      (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, b, r)
      return loss, grads, {k: v for k, v in sums.items() if k.startswith("router/")}

    if grad_accum_steps == 1:
      return loss_and_grads(batch, rng)
    micro = jax.tree.map(lambda x: x.reshape((grad_accum_steps, -1) + x.shape[1:]), batch)

    def body(carry, xs):
      mb, i = xs
      return jax.tree.map(jnp.add, carry, loss_and_grads(mb, jax.random.fold_in(rng, i))), None

    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(loss_and_grads, first, rng))
    total, _ = lax.scan(body, zeros, (micro, jnp.arange(grad_accum_steps)))
    return jax.tree.map(lambda x: x / grad_accum_steps, total)

  def step(state, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    loss, grads, router = micro_grads(state.params, state.frozen, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    loads = router.pop(EXPERT_LOAD, None)
    if bias_rate and loads:
      params = moe.update_correction_biases(params, loads, bias_rate, before=state.params)
    if loads:  # each MoE layer's share of assignments per expert, [E] each
      router.update({f"{EXPERT_LOAD}/{layer}": load
                     for layer, load in moe.loads_by_layer(loads, first_stacked).items()})
    metrics = {"train/loss": loss, "train/grad_norm": optax.tree.norm(grads),
               "train/param_norm": optax.tree.norm(params),
               "train/learning_rate": optim.current_learning_rate(opt_state),
               **{f"train/{name}": value for name, value in router.items()}}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step
