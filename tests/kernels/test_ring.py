"""Ring attention on 2, 4 and 8 fake CPU devices equals single-device flash attention,
forward and gradients: causal (striped), full, packed segments, GQA, and lengths that the
ring size does not divide; also called on local blocks inside a user's shard_map."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from attention_jax import kernels
from attention_jax.kernels import flash_attention, ring_attention


def inputs(length, heads=4, kv_heads=4, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(2, length, heads, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(2, length, kv_heads, 8)), jnp.float32)
          for _ in range(2))
  segments = jnp.asarray(np.sort(rng.integers(1, 4, size=(2, length)), axis=1), jnp.int32)
  return q, k, v, segments


def value_and_grads(kernel, q, k, v, **kwargs):
  out, vjp = jax.vjp(lambda q, k, v: kernel(q, k, v, **kwargs), q, k, v)
  return out, vjp(jnp.cos(out))


CASES = {  # each with GQA (4 query heads on 2 kv heads) and a length the ring does not divide
    "causal": dict(causal=True),
    "full": dict(),
    "causal, packed segments": dict(causal=True, segments=True),
    "full, packed segments": dict(segments=True),
}


@pytest.mark.slow
@pytest.mark.parametrize("devices,case", [(4, case) for case in CASES] + [
    (n, case) for n in (2, 8) for case in ("causal, packed segments", "full")])
def test_ring_equals_flash(devices, case):
  options = dict(CASES[case])
  length = 8 * devices - 3  # not divisible by the ring size
  q, k, v, segments = inputs(length, kv_heads=2)
  if options.pop("segments", False):
    options["segment_ids"] = segments
  mesh = jax.make_mesh((8 // devices, devices), ("data", "sequence"),
                       axis_types=(AxisType.Auto,) * 2)
  ring = functools.partial(ring_attention, block_q=4, block_k=4)
  with jax.set_mesh(mesh):
    out, grads = jax.jit(functools.partial(value_and_grads, ring, **options))(q, k, v)
  ref_out, ref_grads = value_and_grads(flash_attention, q, k, v, **options)
  np.testing.assert_allclose(out, ref_out, atol=2e-6, rtol=1e-5)
  for name, got, want in zip("qkv", grads, ref_grads):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("striped", [False, True])
def test_ring_inside_a_users_shard_map_takes_local_blocks(striped):
  n = 4
  q, k, v, _ = inputs(4 * n)
  mesh = jax.make_mesh((n,), ("sequence",), axis_types=(AxisType.Auto,))
  order = (np.arange(4 * n).reshape(4, n).T.reshape(-1) if striped
           else np.arange(4 * n))  # device d: tokens d, d + n, ... when striped
  spec = P(None, "sequence", None, None)
  local = jax.shard_map(functools.partial(kernels.get("ring"), causal=True, striped=striped),
                        mesh=mesh, in_specs=(spec,) * 3, out_specs=spec)
  out = jax.jit(local)(q[:, order], k[:, order], v[:, order])
  want = flash_attention(q, k, v, causal=True)[:, order]
  np.testing.assert_allclose(out, want, atol=2e-6, rtol=1e-5)


def test_auto_picks_ring_under_a_sequence_axis_and_ring_is_flash_without_one():
  q, k, v, segments = inputs(16)
  mesh = jax.make_mesh((2, 4), ("data", "sequence"), axis_types=(AxisType.Auto,) * 2)
  with jax.set_mesh(mesh):
    assert kernels.choose(q, k, v, causal=True, segment_ids=segments) == "ring"
    assert kernels.choose(q, k, v, kv_lengths=jnp.array([3, 16])) != "ring"
  assert kernels.choose(q, k, v, causal=True) != "ring"
  np.testing.assert_allclose(ring_attention(q, k, v, causal=True),
                             flash_attention(q, k, v, causal=True), atol=1e-6)
  with pytest.raises(ValueError, match="q_len .* must equal kv_len"):
    ring_attention(q, k[:, :8], v[:, :8])
