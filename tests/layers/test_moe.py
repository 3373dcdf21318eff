"""The mixture-of-experts MLP: both dispatches equal the dense reference (every expert on
every token, masked) in outputs and gradients; capacity drops what its queue says; the
router losses equal transformers' own; the Mixtral family trains, scans and shards.
(Parity with transformers' MixtralForCausalLM: tests/pretrained/test_llama_parity.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import models
from attention_jax.layers import moe, partitioning

TOKENS, WIDTH, HIDDEN, EXPERTS, CHOSEN = 40, 8, 6, 5, 2


def _problem(seed=0):
  keys = jax.random.split(jax.random.key(seed), 5)
  tokens = jax.random.normal(keys[0], (TOKENS, WIDTH))
  logits = 2.0 * jax.random.normal(keys[1], (TOKENS, EXPERTS))
  scale = WIDTH ** -0.5
  gate, up = (scale * jax.random.normal(k, (EXPERTS, WIDTH, HIDDEN)) for k in keys[2:4])
  down = HIDDEN ** -0.5 * jax.random.normal(keys[4], (EXPERTS, HIDDEN, WIDTH))
  return tokens, logits, gate, up, down


def _through(dispatch, normalize=True):
  """dispatch(tokens, weights, experts, gate, up, down) from router logits, differentiable
  in all of them."""
  def run(tokens, logits, gate, up, down):
    weights, experts, _ = moe.route(logits, CHOSEN, normalize)
    return dispatch(tokens, weights, experts, gate, up, down, "silu")
  return run


@pytest.mark.parametrize("normalize", [True, False])  # Mixtral; Qwen3-MoE's norm_topk_prob
def test_dropless_and_ample_capacity_equal_the_dense_reference_with_gradients(normalize):
  problem = _problem()
  reference = _through(moe.dense_reference, normalize)
  ample = lambda *a: moe.with_capacity(*a, capacity_factor=EXPERTS / CHOSEN)[0]  # C = N
  for dispatch in (moe.dropless, ample):
    run = _through(dispatch, normalize)
    np.testing.assert_allclose(run(*problem), reference(*problem), atol=1e-5)
    loss = lambda f: jax.grad(lambda *x: jnp.sum(jnp.sin(f(*x))), argnums=range(5))(*problem)
    for got, want in zip(loss(run), loss(reference)):
      np.testing.assert_allclose(got, want, atol=2e-5)
  assert moe.with_capacity(*_chosen(*problem), EXPERTS / CHOSEN)[1] == 0.0


def _chosen(tokens, logits, gate, up, down):
  weights, experts, _ = moe.route(logits, CHOSEN, True)
  return tokens, weights, experts, gate, up, down, "silu"


def test_capacity_keeps_first_choices_first_and_drops_the_overflow():
  """A queue per expert, simulated in numpy: every token's first choice, in token order,
  then every second choice; each expert keeps the first C. The outputs equal the dense
  reference with the dropped assignments' weights zeroed."""
  problem = _problem(1)
  tokens, weights, experts, gate, up, down, _ = _chosen(*problem)
  factor = 0.6
  capacity = int(np.ceil(factor * TOKENS * CHOSEN / EXPERTS))  # 10 of 16 on average
  kept = np.zeros((TOKENS, CHOSEN), bool)
  taken = np.zeros(EXPERTS, int)
  for choice in range(CHOSEN):
    for token in range(TOKENS):
      e = int(experts[token, choice])
      kept[token, choice] = taken[e] < capacity
      taken[e] += 1
  assert 0 < (~kept).sum() and kept[:, 0].sum() > kept[:, 1].sum()
  out, dropped = moe.with_capacity(tokens, weights, experts, gate, up, down, "silu", factor)
  assert dropped == pytest.approx((~kept).mean())
  want = moe.dense_reference(tokens, jnp.where(kept, weights, 0.0), experts, gate, up, down,
                             "silu")
  np.testing.assert_allclose(out, want, atol=1e-5)


def test_router_losses_equal_transformers_and_the_formula():
  torch = pytest.importorskip("torch")
  mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
  _, logits, *_ = _problem(2)
  _, experts, probabilities = moe.route(logits, CHOSEN, True)
  want = mixtral.load_balancing_loss_func((torch.tensor(np.asarray(logits)),), EXPERTS,
                                          CHOSEN)
  assert float(moe.load_balancing_loss(probabilities, experts, EXPERTS)) == pytest.approx(
      float(want), rel=1e-5)
  lse = np.log(np.exp(np.asarray(logits, np.float64)).sum(-1))
  assert float(moe.router_z_loss(logits)) == pytest.approx(np.mean(lse ** 2), rel=1e-5)


@pytest.mark.parametrize("dispatch", ["dropless", "capacity"])
def test_mixtral_trains_its_experts_sows_its_router_metrics_and_scans(dispatch):
  model = models.create("mixtral-tiny", moe_dispatch=dispatch, capacity_factor=1.0)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, model.config.vocab_size)
  params = model.init(jax.random.key(0), tokens)["params"]
  mlp = params["block_0"]["mlp"]
  assert mlp["router"]["kernel"].shape == (32, 4)
  assert mlp["experts"]["gate"].shape == (4, 32, 24) and mlp["experts"]["fc2"].shape == (
      4, 24, 32)
  logits, sown = model.apply({"params": params}, tokens, mutable=["intermediates"])
  metrics = sown["intermediates"]["block_0"]["mlp"]
  load = metrics["expert_load"][0]
  assert load.shape == (4,) and float(load.sum()) == pytest.approx(1.0)
  assert float(metrics["load_balancing_loss"][0]) >= 1.0 - 1e-5  # 1 is the even load
  assert ("dropped_fraction" in metrics) == (dispatch == "capacity")
  grads = jax.grad(lambda p: model.apply({"params": p}, tokens).std())(params)
  for name in ("gate", "fc1", "fc2"):
    assert np.abs(grads["block_0"]["mlp"]["experts"][name]).max() > 0
  assert np.abs(grads["block_0"]["mlp"]["router"]["kernel"]).max() > 0
  from attention_jax.models import layouts
  scanned = models.with_options(model, scan_layers=True, remat="full")
  np.testing.assert_allclose(scanned.apply({"params": layouts.stack(params)}, tokens), logits,
                             atol=1e-5)
  axes = partitioning.logical_axes(params)
  assert axes["block_0"]["mlp"]["experts"]["fc2"] == partitioning.PartitionSpec(
      "expert", "mlp", "embed")


def test_mixture_of_experts_configs_say_what_is_wrong():
  with pytest.raises(ValueError, match="1 <= experts_per_token <= num_experts; got "
                     "num_experts=4, experts_per_token=5"):
    models.create("mixtral-tiny", experts_per_token=5)
  with pytest.raises(ValueError, match="experts_per_token describe a mixture of experts; "
                     "set num_experts"):
    models.create("llama-tiny", experts_per_token=2)
  with pytest.raises(ValueError, match="moe_dispatch must be one of"):
    models.create("mixtral-tiny", moe_dispatch="sparse")
  from attention_jax.layers.lora import LoraSpec
  model = models.create("mixtral-tiny", lora=LoraSpec(targets=("query", "fc1")))
  with pytest.raises(ValueError, match="name MLP projections, which a mixture of experts "
                     "holds per expert"):
    model.init(jax.random.key(0), *model.example_inputs())
