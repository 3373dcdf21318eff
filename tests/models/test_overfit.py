"""A tiny model of each family must fit a small fixed batch (it really learns)."""

import optax
import pytest
import jax
import jax.numpy as jnp

from attention_jax import models

KEY = jax.random.key(0)
TOKENS = jax.random.randint(jax.random.key(1), (4, 16), 3, 128)


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def gpt_loss(model, params, rng):
  logits = model.apply({"params": params}, TOKENS[:, :-1], deterministic=False,
                       rngs={"dropout": rng})
  return cross_entropy(logits, TOKENS[:, 1:])


def bert_loss(model, params, rng):
  labels = jnp.array([0, 1, 2, 1])
  out = model.apply({"params": params}, TOKENS, deterministic=False, rngs={"dropout": rng})
  return cross_entropy(out["logits"], labels)


def translation_loss(model, params, rng):
  source, target = TOKENS[:, :8], TOKENS[:, 8:][:, ::-1]
  target_in = jnp.concatenate([jnp.ones((4, 1), jnp.int32), target[:, :-1]], axis=1)
  logits = model.apply({"params": params}, source, target_in, deterministic=False,
                       rngs={"dropout": rng})
  return cross_entropy(logits, target)


def xl_loss(model, params, rng):
  memory, loss = None, 0.0
  for s in range(2):  # two segments, the second attending to the first through memory
    segment = TOKENS[:, 8 * s:8 * (s + 1)]
    log_probs, memory = model.apply({"params": params}, segment[:, :-1], memory,
                                    deterministic=False, rngs={"dropout": rng})
    loss += cross_entropy(log_probs, segment[:, 1:]) / 2
  return loss


IMAGES = jax.random.normal(jax.random.key(2), (8, 16, 16, 1))


def vit_loss(model, params, rng):
  logits = model.apply({"params": params}, IMAGES, deterministic=False, rngs={"dropout": rng})
  return cross_entropy(logits, jnp.arange(8) % 10)


CASES = {  # preset, overrides, loss, init inputs, steps, threshold
    "gpt": ("gpt-tiny", {}, gpt_loss, (TOKENS,), 150, 0.5),
    "bert": ("bert-tiny", {"num_classes": 3}, bert_loss, (TOKENS,), 60, 0.1),
    "encoder_decoder": ("transformer-tiny", {}, translation_loss,
                        (TOKENS[:, :8], TOKENS[:, 8:]), 150, 0.5),
    "transformer_xl": ("transformer-xl-tiny", {}, xl_loss, (TOKENS[:, :7],), 150, 0.5),
    "vit": ("vit-tiny", {}, vit_loss, (IMAGES,), 60, 0.1),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(CASES))
def test_tiny_model_overfits_a_batch(family):
  preset, overrides, loss_fn, inputs, steps, threshold = CASES[family]
  model = models.create(preset, **overrides)
  params = model.init(KEY, *inputs)["params"]
  optimizer = optax.adam(3e-3)
  state = optimizer.init(params)

  @jax.jit
  def step(params, state, rng):
    loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, rng))(params)
    updates, state = optimizer.update(grads, state)
    return optax.apply_updates(params, updates), state, loss

  first = None
  for i in range(steps):
    params, state, loss = step(params, state, jax.random.fold_in(KEY, i))
    first = loss if first is None else first
  assert loss < threshold < first, (family, float(first), float(loss))
