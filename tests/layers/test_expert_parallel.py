"""Expert parallelism by explicit collectives (`layers.expert_parallel`) on 8 fake CPU
devices: the mixture-of-experts layer in a `shard_map` gives one device's outputs and
gradients (dropless, and capacity with room for every token); with capacity, each device's
tokens fill their own buffers (GShard's groups), which the reference computes device by
device; the compiler's partitioning keeps one device's global capacity; the programs use
the collectives they say."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from attention_jax import models
from attention_jax.layers import moe

AXES = ("data", "fsdp", "expert", "sequence", "tensor")
MESHES = {"expert=4 x data=2": (2, 1, 4, 1, 1),
          "expert=2 x fsdp=2 x tensor=2": (1, 2, 2, 1, 2),
          "expert=2 x sequence=2 x tensor=2": (1, 1, 2, 2, 2)}
BATCH = ("data", "fsdp", "expert")


def _layer(**overrides):
  config = models.create("mixtral-tiny", **{"num_experts": 8, **overrides}).config
  layer = moe.MoeMlp(config)
  x = jax.random.normal(jax.random.key(0), (8, 16, config.width))
  return layer, layer.init(jax.random.key(1), x)["params"], x


def _run(layer, params, x, mesh_shape=None):
  """(outputs, dropped fraction or None, gradient of a loss) on one device or the mesh,
  and the compiled program's text."""
  def loss(params, x):
    y, sown = layer.apply({"params": params}, x, mutable=["intermediates"])
    return jnp.sum(jnp.sin(y)), (y, sown["intermediates"].get("dropped_fraction"))
  step = jax.jit(jax.value_and_grad(loss, has_aux=True))
  if mesh_shape is None:
    (_, (y, dropped)), grads = step(params, x)
    return y, dropped, grads, ""
  mesh = jax.make_mesh(mesh_shape, AXES, axis_types=(AxisType.Auto,) * len(AXES))
  with jax.set_mesh(mesh):
    x = jax.device_put(x, NamedSharding(mesh, P(BATCH, "sequence")))
    (_, (y, dropped)), grads = step(params, x)
    text = step.lower(params, x).compile().as_text()
  return y, dropped, grads, text


def _close(got, want, atol=2e-6):
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol)


@pytest.mark.parametrize("mesh", list(MESHES))
@pytest.mark.parametrize("dispatch", ["dropless", "capacity"])
def test_explicit_collectives_give_one_devices_outputs_and_gradients(mesh, dispatch):
  """capacity_factor = E / k: every buffer holds every token, so nothing drops anywhere."""
  layer, params, x = _layer(moe_dispatch=dispatch, capacity_factor=4.0)
  y, dropped, grads, text = _run(layer, params, x, MESHES[mesh])
  want_y, _, want_grads, _ = _run(layer, params, x)
  _close(y, want_y)
  _close(grads, want_grads)
  if dispatch == "capacity":
    assert float(dropped[0]) == 0.0
    assert "all-to-all" in text
  else:
    assert "all-gather" in text and "reduce-scatter" in text


def test_explicit_capacity_fills_each_devices_own_buffers():
  """expert=4 x data=2 at capacity_factor 1: the same as the layer run on each device's
  batch row alone (each of 8 devices holds one of the 8 rows), drops included."""
  layer, params, x = _layer(moe_dispatch="capacity", capacity_factor=1.0)
  y, dropped, grads, _ = _run(layer, params, x, MESHES["expert=4 x data=2"])
  rows = [_run(layer, params, x[i:i + 1]) for i in range(8)]
  np.testing.assert_allclose(y, np.concatenate([r[0] for r in rows]), atol=2e-6)
  np.testing.assert_allclose(dropped[0], np.mean([r[1][0] for r in rows]), atol=1e-7)
  assert float(dropped[0]) > 0.05  # the test exercises drops


def test_compiler_collectives_keep_one_devices_global_capacity():
  layer, params, x = _layer(moe_dispatch="capacity", capacity_factor=1.0,
                            expert_collectives="compiler")
  y, dropped, grads, _ = _run(layer, params, x, MESHES["expert=4 x data=2"])
  want_y, want_dropped, want_grads, _ = _run(layer, params, x)
  assert float(want_dropped[0]) > 0.05
  _close((y, dropped, grads), (want_y, want_dropped, want_grads))


def test_expert_collectives_say_what_is_wrong():
  with pytest.raises(ValueError, match="expert_collectives must be one of "
                     r"\('explicit', 'compiler'\), got 'gspmd'"):
    models.create("mixtral-tiny", expert_collectives="gspmd")
  layer, params, x = _layer(num_experts=6)  # 6 experts over expert=4
  with pytest.raises(ValueError, match="num_experts=6 cannot be split over the mesh's "
                     "expert=4 devices"):
    _run(layer, params, x, MESHES["expert=4 x data=2"])
