"""The vendor kernels on CPU: splash (TPU) and pallas_gpu (GPU) in Pallas interpret mode
through the same numpy reference as our own kernels, cuDNN's argument mapping through
jax.nn's XLA implementation (the same semantics), and `auto`'s choice per platform."""

import functools

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from attention_jax import kernels
from attention_jax.kernels import xla as xla_lib
from tests.kernels import reference
from tests.kernels.cases import CASES, make_inputs
from tests.kernels.test_softmax_kernels import check_bfloat16, reference_mask

PALLAS = ("splash", "pallas_gpu")
PLATFORM = {"splash": "tpu", "pallas_gpu": "gpu"}
# Native on their own platform (.ci/gpu_check runs these tests on a GPU), interpreted elsewhere.
INTERPRET = {name: jax.default_backend() != PLATFORM[name] for name in PALLAS}
# Interpret mode computes in float32 on the CPU; on a GPU, Triton's float32 dots use TF32.
F32_TOLERANCE = {True: (2e-6, 2e-5), False: (5e-3, 5e-2)}


def supported(name, case, kwargs):
  """Whether kernel `name` takes this case: every set argument is one it takes (from the
  registry), plus what the Pallas GPU op cannot express (see kernels/pallas_gpu.py)."""
  kernel = kernels.get(name)
  if any(v is not None and not kernel.supports(k) for k, v in kwargs.items()):
    return False
  if name == "pallas_gpu" and case.q_len > case.kv_len and not case.causal:
    return False
  return True


def set_arguments(kwargs):
  return {k: v for k, v in kwargs.items() if v is not None}


PALLAS_CASES = [(name, case) for name in PALLAS for case in CASES
                if supported(name, case, set_arguments(make_inputs(case)[4]))]


def test_every_case_kind_is_covered():
  """The mask kinds the issue names run through each Pallas kernel that takes them."""
  covered = {name: {c.name for n, c in PALLAS_CASES if n == name} for name in PALLAS}
  assert {"causal_257_gqa", "decode_1_of_257_causal_mqa", "segments_96"} <= covered["pallas_gpu"]
  assert {"decode_1_of_257_causal_mqa", "causal_window_257", "window_left_right_130x200",
          "segments_96", "cross_100x1000_lengths", "zero_length_row",
          "causal_segments_lengths", "causal_257_gqa"} <= covered["splash"]


@pytest.mark.slow
@pytest.mark.parametrize("name,case", PALLAS_CASES, ids=lambda x: str(x))
def test_pallas_kernels_in_interpret_mode_f32(name, case):
  q, k, v, d_out, kwargs = make_inputs(case)
  interpret = INTERPRET[name]
  fn = jax.jit(functools.partial(kernels.get(name), interpret=interpret,
                                 **set_arguments(kwargs)))
  atol, grad_atol = F32_TOLERANCE[interpret]
  mask = reference_mask(case, kwargs)
  want, _ = reference.attention_reference(q, k, v, mask=mask)
  np.testing.assert_allclose(fn(q, k, v), want, atol=atol, rtol=0)
  grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * d_out), (0, 1, 2)))(q, k, v)
  want_grads = reference.attention_reference_grads(q, k, v, d_out, mask=mask)[:3]
  for axis, got, exp in zip("qkv", grads, want_grads):
    np.testing.assert_allclose(got, exp, atol=grad_atol, rtol=1e-5, err_msg=f"d{axis}")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN needs an NVIDIA GPU")
@pytest.mark.parametrize("case", [c for c in CASES if c.head_dim % 8 == 0], ids=str)
def test_cudnn_on_a_gpu_bfloat16(case):
  """On a GPU (.ci/gpu_check): cuDNN with our mapping, forward and gradients."""
  check_bfloat16(kernels.get("cudnn"), case)


@pytest.mark.slow
@pytest.mark.parametrize("name", PALLAS)
def test_pallas_kernels_bfloat16(name):
  check_bfloat16(kernels.get(name), next(c for c in CASES if c.name == "causal_257_gqa"),
                 interpret=INTERPRET[name])


@pytest.mark.slow
def test_splash_block_overrides_and_long_sequence():
  """Several blocks per sequence (the block-sparse skipping) with blocks set by name."""
  rng = np.random.default_rng(3)
  q = jnp.asarray(rng.standard_normal((1, 300, 2, 16)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((1, 700, 1, 16)), jnp.float32)
  fn = kernels.get("splash:interpret=true,block_q=128,block_kv=256")
  mask = reference.mask_reference(1, 300, 700, causal=True, local_window=150)
  want, _ = reference.attention_reference(q, k, k, mask=mask)
  np.testing.assert_allclose(fn(q, k, k, causal=True, local_window=150), want, atol=2e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's error message")
@pytest.mark.parametrize("name,platform", [("splash", "TPU"), ("pallas_gpu", "NVIDIA GPU")])
def test_pallas_kernels_on_cpu_need_interpret_mode(name, platform):
  kernel = kernels.get(name)  # resolving the name works on any platform
  q, k, v, _, _ = make_inputs(CASES[1])
  with pytest.raises(ValueError, match=f"{platform}.*backend is 'cpu'.*interpret=True"):
    kernel(q, k, v)


def test_kernel_options_in_the_name():
  kernel = kernels.get("pallas_gpu:interpret=true,block_q=16,block_k=32")
  assert kernel.name == "pallas_gpu"
  q, k, v, _, _ = make_inputs(CASES[1])
  want, _ = reference.attention_reference(q, k, v)
  np.testing.assert_allclose(kernel(q, k, v), want, atol=2e-6)
  with pytest.raises(ValueError, match="bad option 'blocks=2' for kernel 'splash'.*block_q"):
    kernels.get("splash:blocks=2")
  with pytest.raises(ValueError, match="multiple of 128"):
    kernels.get("splash:interpret=true,block_q=100")(q, k, v)
  with pytest.raises(ValueError, match="power of two >= 16"):
    kernels.get("pallas_gpu:interpret=true,block_q=48")(q, k, v)
  with pytest.raises(ValueError, match="option 'block_q=big'.*a number"):
    kernels.get("splash:block_q=big")
  with pytest.raises(ValueError, match="one `segment_ids` array"):
    kernels.get("pallas_gpu:interpret=true")(q, k, v, segment_ids=(jnp.zeros((2, 7), int),) * 2)


def test_cudnn_mapping_uses_its_own_arguments_not_a_dense_mask(monkeypatch):
  """Causal, left windows and lengths reach jax.nn as is_causal / local_window_size /
  key_value_seq_lengths with mask=None; what has no argument falls back to a dense mask."""
  calls = []
  original = jax.nn.dot_product_attention

  def spy(*args, **kwargs):
    calls.append(kwargs)
    return original(*args, **kwargs)

  monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
  q, k, v, _, _ = make_inputs(CASES[3])  # causal 257 x 257, GQA
  lengths = jnp.array([257])
  kernels.xla_attention(q, k, v, causal=True, kv_lengths=lengths, local_window=(16, 0))
  native = calls[-1]
  assert native["mask"] is None and native["is_causal"]
  assert native["local_window_size"] == (16, 0)
  np.testing.assert_array_equal(native["key_value_seq_lengths"], lengths)
  kernels.xla_attention(q, k[:, :200], v[:, :200], causal=True)  # q_len != kv_len
  assert calls[-1]["mask"] is not None and "is_causal" not in calls[-1]
  kernels.xla_attention(q, k, v, local_window=(4, 4))  # reaches right: no cuDNN argument
  assert calls[-1]["mask"] is not None
  kernels.xla_attention(q, k, v, causal=True, segment_ids=jnp.zeros((1, 257), jnp.int32))
  assert calls[-1]["mask"].shape == (1, 1, 257, 257)  # segments only, shared by the heads
  assert calls[-1]["is_causal"]  # the structure keeps cuDNN's own argument


@pytest.mark.parametrize("case", [c for c in CASES if c.dense_mask or c.segments
                                  or c.q_len % 2 or c.kv_len % 2], ids=str)
def test_cudnn_even_length_padding(monkeypatch, case):
  """cuDNN takes a bias (our dense masks) in training only at even lengths; the padding that
  gives it them, run through jax.nn's XLA implementation: same outputs and gradients."""
  monkeypatch.setattr(xla_lib, "EVEN_LENGTHS_WITH_BIAS", ("cudnn", "xla"))
  q, k, v, d_out, kwargs = make_inputs(case)
  rng = np.random.default_rng(5)
  bias = jnp.asarray(rng.standard_normal((1, 1, case.q_len, case.kv_len)), jnp.float32)
  fn = jax.jit(functools.partial(kernels.xla_attention, bias=bias, **set_arguments(kwargs)))
  mask = reference_mask(case, kwargs)
  want, _ = reference.attention_reference(q, k, v, bias=bias, mask=mask)
  np.testing.assert_allclose(fn(q, k, v), want, atol=2e-6)
  grads = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * d_out), (0, 1, 2))(q, k, v)
  want_grads = reference.attention_reference_grads(q, k, v, d_out, bias=bias, mask=mask)[:3]
  for got, exp in zip(grads, want_grads):
    np.testing.assert_allclose(got, exp, atol=2e-5, rtol=1e-5)


def test_native_arguments_clamp_empty_lengths():
  kwargs, dense = xla_lib.native_arguments(5, 5, kv_lengths=jnp.array([0, 3]))
  assert not dense
  np.testing.assert_array_equal(kwargs["key_value_seq_lengths"], [1, 3])


class FakeGpu:
  def __init__(self, compute_capability):
    self.compute_capability = compute_capability


def fake_backend(monkeypatch, platform, compute_capability="9.0"):
  """Makes jax report `platform` (and, for a GPU, an H100's compute capability)."""
  monkeypatch.setattr(jax, "default_backend", lambda: platform)
  if platform == "gpu":
    monkeypatch.setattr(jax, "devices", lambda *_: [FakeGpu(compute_capability)])


def test_auto_skips_cudnn_before_ampere_and_big_heads_before_hopper(monkeypatch):
  q = jax.ShapeDtypeStruct((1, 1024, 8, 256), jnp.bfloat16)
  fake_backend(monkeypatch, "gpu", "7.0")  # V100: no cuDNN flash attention
  assert kernels.choose(q, q, q, causal=True) == "pallas_gpu"
  fake_backend(monkeypatch, "gpu", "8.0")  # A100: head_dim 256 is too big for cuDNN
  assert kernels.choose(q, q, q, causal=True) == "pallas_gpu"
  fake_backend(monkeypatch, "gpu", "9.0")
  assert kernels.choose(q, q, q, causal=True) == "cudnn"


AUTO_TABLE = [
    # platform, dtype, q_len, kv_len, extra arguments, expected choice
    ("tpu", jnp.bfloat16, 2048, 2048, {"causal": True}, "splash"),
    ("tpu", jnp.float32, 512, 512, {"kv_lengths": jnp.array([5])}, "splash"),
    ("tpu", jnp.float32, 512, 512, {"mask": jnp.ones((512, 512), bool)}, "xla"),
    ("tpu", jnp.bfloat16, 1, 4096, {"causal": True}, "xla"),  # decoding: one query row
    ("gpu", jnp.bfloat16, 4096, 4096, {"causal": True}, "cudnn"),
    ("gpu", jnp.float16, 1, 4096, {"kv_lengths": jnp.array([5])}, "cudnn"),
    ("gpu", jnp.bfloat16, 4096, 4096, {"segment_ids": jnp.zeros((1, 4096), jnp.int32)},
     "pallas_gpu"),  # packed sequences: cuDNN has no segment argument
    ("gpu", jnp.bfloat16, 512, 512, {"segment_ids": jnp.zeros((1, 512), jnp.int32),
                                     "kv_lengths": jnp.array([5])}, "cudnn"),
    ("gpu", jnp.float32, 4096, 4096, {"causal": True}, "pallas_gpu"),
    ("gpu", jnp.float32, 512, 512, {"segment_ids": jnp.zeros((1, 512), jnp.int32)},
     "pallas_gpu"),
    ("gpu", jnp.float32, 512, 512, {"kv_lengths": jnp.array([5])}, "xla"),
    ("gpu", jnp.float32, 1, 4096, {"causal": True}, "xla"),
    ("cpu", jnp.float32, 1024, 1024, {"causal": True}, "flash"),
    ("cpu", jnp.float32, 512, 512, {}, "dot_product"),
]


@pytest.mark.parametrize("platform,dtype,q_len,kv_len,extra,expected", AUTO_TABLE,
                         ids=lambda x: x if isinstance(x, (str, int)) else None)
def test_auto_choice_per_platform(monkeypatch, platform, dtype, q_len, kv_len, extra,
                                  expected):
  fake_backend(monkeypatch, platform)
  q = jax.ShapeDtypeStruct((1, q_len, 8, 64), dtype)
  kv = jax.ShapeDtypeStruct((1, kv_len, 8, 64), dtype)
  assert kernels.choose(q, kv, kv, **extra) == expected


@pytest.mark.parametrize("platform", ["tpu", "gpu"])
def test_auto_never_takes_the_lax_flash_loop_on_an_accelerator(monkeypatch, platform):
  fake_backend(monkeypatch, platform)
  for dtype in (jnp.float32, jnp.bfloat16):
    for q_len in (1, 128, 4096, 32768):
      for extra in ({}, {"causal": True}, {"kv_lengths": jnp.array([3])},
                    {"local_window": 64}, {"mask": jnp.ones((1, 1), bool)}):
        q = jax.ShapeDtypeStruct((1, q_len, 8, 128), dtype)
        kv = jax.ShapeDtypeStruct((1, 32768, 8, 128), dtype)
        choice = kernels.choose(q, kv, kv, **extra)
        assert choice in ("splash", "cudnn", "pallas_gpu", "xla"), (dtype, q_len, extra)
    biased = kernels.choose(q, kv, kv, bias=jnp.zeros((1, 1)))
    assert biased == "dot_product"


def test_auto_runs_the_chosen_pallas_kernel(monkeypatch):
  """On a (faked) GPU in float32, auto dispatches to pallas_gpu with the arguments it takes;
  here it runs without interpret mode only because the platform check is faked too."""
  fake_backend(monkeypatch, "gpu")
  seen = []
  original = kernels.registry._KERNELS["pallas_gpu"]

  @functools.wraps(original.fn)  # keeps the signature the registry reads
  def recording(*args, **kwargs):
    seen.append(kwargs)
    return original.fn(*args, interpret=True, **kwargs)

  monkeypatch.setitem(kernels.registry._KERNELS, "pallas_gpu",
                      kernels.Kernel("pallas_gpu", recording, ""))
  q, k, v, _, kwargs = make_inputs(CASES[3])
  out = kernels.auto_attention(q, k, v, **kwargs)
  assert seen and set(seen[0]) <= original.arguments
  want, _ = reference.attention_reference(q, k, v, mask=reference_mask(CASES[3], kwargs))
  np.testing.assert_allclose(out, want, atol=2e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["splash:interpret=true", "pallas_gpu:interpret=true"])
def test_model_with_a_pallas_kernel_by_name(kernel):
  """A config's `model.kernel` string reaches the layers: a packed GPT gives the logits and
  gradients of the same GPT with the dense kernel."""
  from attention_jax import models
  tokens = jax.random.randint(jax.random.key(0), (2, 40), 0, 50)
  segments = jnp.repeat(jnp.arange(2)[None], 20, axis=1).reshape(1, 40).repeat(2, 0)
  dense = models.create("gpt-tiny", vocab_size=50, kernel="dot_product")
  params = dense.init(jax.random.key(1), tokens)["params"]
  vendor = models.with_options(dense, kernel=kernel)

  def loss(model, params):
    return jnp.mean(model.apply({"params": params}, tokens, segment_ids=segments) ** 2)

  np.testing.assert_allclose(loss(vendor, params), loss(dense, params), rtol=1e-5)
  want = jax.grad(functools.partial(loss, dense))(params)
  got = jax.grad(functools.partial(loss, vendor))(params)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4)
