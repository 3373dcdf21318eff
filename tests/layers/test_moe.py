"""The mixture-of-experts MLP: both dispatches equal the dense reference (every expert on
every token, masked) in outputs and gradients; capacity drops what its queue says; the
router losses and the routers (softmax, DeepSeek's sigmoid and group-limited ones) equal
transformers' own; the correction bias, shared experts and dense first layers; the Mixtral
family trains, scans and shards.
(Parity with transformers' MixtralForCausalLM: tests/pretrained/test_llama_parity.py.)"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import models
from attention_jax.layers import grouped_matmul, moe, partitioning

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
  ragged = functools.partial(moe.dropless, matmul="ragged_dot")
  for dispatch in (moe.dropless, ragged, ample):
    run = _through(dispatch, normalize)
    np.testing.assert_allclose(run(*problem), reference(*problem), atol=1e-5)
    loss = lambda f: jax.grad(lambda *x: jnp.sum(jnp.sin(f(*x))), argnums=range(5))(*problem)
    for got, want in zip(loss(run), loss(reference)):
      np.testing.assert_allclose(got, want, atol=2e-5)
  assert moe.with_capacity(*_chosen(*problem), EXPERTS / CHOSEN)[1] == 0.0


@pytest.mark.parametrize("sizes", [[5, 0, 17, 1, 0, 9], [32, 0, 0, 0, 0, 0], [0] * 5 + [32]])
@pytest.mark.parametrize("block", [8, 16])
def test_grouped_matmul_multiplies_each_group_by_its_matrix_with_gradients(sizes, block):
  """Blocks of rows per group, against numpy group by group; gradients against
  jax.lax.ragged_dot's; empty groups, one full group, a group bigger than a block."""
  keys = jax.random.split(jax.random.key(0), 3)
  sizes = jnp.array(sizes, jnp.int32)
  rows, groups = int(sizes.sum()), sizes.shape[0]
  x = jax.random.normal(keys[0], (rows, 12))
  w = jax.random.normal(keys[1], (groups, 12, 7))
  target = jax.random.normal(keys[2], (rows, 7))

  def blocked(x, w):
    layout = grouped_matmul.block_layout(sizes, rows, block)
    return grouped_matmul.from_blocks(
        grouped_matmul.grouped_matmul(grouped_matmul.to_blocks(x, layout), w, layout), layout)

  layout = grouped_matmul.block_layout(sizes, rows, block)
  assert int(layout.used_blocks) == int(np.sum(-(-np.asarray(sizes) // block)))
  starts = np.concatenate([[0], np.cumsum(sizes)])
  want = np.concatenate([np.asarray(x)[a:b] @ np.asarray(w)[g]
                         for g, (a, b) in enumerate(zip(starts[:-1], starts[1:]))])
  np.testing.assert_allclose(blocked(x, w), want, rtol=1e-5, atol=1e-5)
  loss = lambda f: jax.grad(lambda x, w: jnp.sum((f(x, w) - target) ** 2), argnums=(0, 1))
  ragged = lambda x, w: jax.lax.ragged_dot(x, w, sizes)
  for got, expected in zip(loss(blocked)(x, w), loss(ragged)(x, w)):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  empty = np.asarray(sizes) == 0
  assert np.all(np.asarray(loss(blocked)(x, w)[1])[empty] == 0)  # unchosen experts: no grad


def test_the_blocked_backward_never_holds_a_row_per_expert():
  """The compiled gradient's temporaries for 64 experts (5.4 MiB: a few [blocks, block,
  width] buffers and the weights' gradient) stay below a quarter of one [rows, experts,
  width] array, which a dense grouped matmul holds several of (XLA:CPU's ragged_dot: 105)."""
  rows, experts, width = 2048, 64, 64
  sizes = jnp.full((experts,), rows // experts, jnp.int32)

  def loss(x, w):
    layout = grouped_matmul.block_layout(sizes, rows, 32)
    y = grouped_matmul.grouped_matmul(grouped_matmul.to_blocks(x, layout), w, layout)
    return jnp.sum(grouped_matmul.from_blocks(y, layout) ** 2)

  shapes = (jax.ShapeDtypeStruct((rows, width), jnp.float32),
            jax.ShapeDtypeStruct((experts, width, width), jnp.float32))
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*shapes).compile()
  dense_bytes = rows * experts * width * 4  # 32 MiB
  assert compiled.memory_analysis().temp_size_in_bytes < dense_bytes / 4


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


@pytest.mark.parametrize("dispatch,matmul", [("dropless", "blocked"), ("dropless", "ragged_dot"),
                                             ("capacity", "blocked")])
def test_mixtral_trains_its_experts_sows_its_router_metrics_and_scans(dispatch, matmul):
  model = models.create("mixtral-tiny", moe_dispatch=dispatch, capacity_factor=1.0,
                        grouped_matmul=matmul)
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
  with pytest.raises(ValueError, match="grouped_matmul must be one of \\('blocked', "
                     "'ragged_dot'\\), got 'megablox'"):
    models.create("mixtral-tiny", grouped_matmul="megablox")
  from attention_jax.layers.lora import LoraSpec
  model = models.create("mixtral-tiny", lora=LoraSpec(targets=("query", "fc1")))
  with pytest.raises(ValueError, match="name MLP projections, which a mixture of experts "
                     "holds per expert"):
    model.init(jax.random.key(0), *model.example_inputs())


def _combined(weights, experts, num_experts):
  """[N, E]: each token's weight on each expert (0 where not chosen), order-free."""
  weights, experts = np.asarray(weights, np.float64), np.asarray(experts)
  out = np.zeros((weights.shape[0], num_experts))
  np.put_along_axis(out, experts, weights, axis=-1)
  return out


@pytest.mark.parametrize("version", ["v3", "v2-group-limited", "v2-greedy", "qwen2-moe"])
def test_routers_choose_and_weigh_as_transformers_routers(version):
  """DeepSeek-V3's sigmoid router (group-limited by each group's two best biased scores,
  the correction bias choosing but not weighting, renormalised, scaled), DeepSeek-V2's
  softmax router (limited by each group's best score, or greedy) and Qwen2-MoE's, each
  against transformers' own module on the same weights."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from transformers.models.deepseek_v2 import modeling_deepseek_v2 as v2
  from transformers.models.deepseek_v3 import modeling_deepseek_v3 as v3
  from transformers.models.qwen2_moe import modeling_qwen2_moe as qwen2_moe
  experts, chosen, width = 16, 3, 8
  torch.manual_seed(0)
  options = dict(hidden_size=width, num_attention_heads=2, num_experts_per_tok=chosen,
                 routed_scaling_factor=2.5)
  bias = None
  if version == "v3":
    router = v3.DeepseekV3TopkRouter(transformers.DeepseekV3Config(
        **options, n_routed_experts=experts, n_group=4, topk_group=2, norm_topk_prob=True))
    bias = torch.randn(experts) * 0.3
    router.e_score_correction_bias.copy_(bias)
    ours = dict(scoring="sigmoid", n_group=4, topk_group=2, normalize=True, scaling=2.5)
  elif version.startswith("v2"):
    grouped = version == "v2-group-limited"
    router = v2.DeepseekV2TopkRouter(transformers.DeepseekV2Config(
        **options, n_routed_experts=experts, n_group=4, topk_group=2,
        topk_method="group_limited_greedy" if grouped else "greedy"))
    ours = dict(scoring="softmax", n_group=4 if grouped else None,
                topk_group=2 if grouped else None, normalize=False, scaling=2.5)
  else:
    router = qwen2_moe.Qwen2MoeTopKRouter(transformers.Qwen2MoeConfig(
        hidden_size=width, num_experts=experts, num_experts_per_tok=chosen,
        norm_topk_prob=True))
    ours = dict(scoring="softmax", n_group=None, topk_group=None, normalize=True,
                scaling=1.0)
  with torch.no_grad():
    router.weight.copy_(torch.randn(experts, width))
    tokens = torch.randn(64, width)
    logits, want_weights, want_experts = router(tokens)
  normalize = ours.pop("normalize")
  weights, chosen_experts, _ = moe.route(
      jnp.asarray(logits.numpy()), chosen, normalize,
      correction_bias=None if bias is None else jnp.asarray(bias.numpy()), **ours)
  got = _combined(weights, chosen_experts, experts)
  want = _combined(want_weights.float().numpy(), want_experts.numpy(), experts)
  np.testing.assert_array_equal(got > 0, want > 0)  # the same experts for every token
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  if version == "v3":  # the bias changes the choice, and only the choice
    unbiased = moe.route(jnp.asarray(logits.numpy()), chosen, True, **ours)
    assert not np.array_equal(np.asarray(unbiased[1]), np.asarray(chosen_experts))


def test_the_correction_bias_gets_no_gradient_and_moves_towards_an_even_load():
  model = models.create("mixtral-tiny", router_scoring="sigmoid", num_experts=8, n_group=4,
                        topk_group=2, router_correction_bias=True,
                        router_bias_update_rate=0.01)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, model.config.vocab_size)
  params = model.init(jax.random.key(0), tokens)["params"]
  bias = params["block_0"]["mlp"][moe.CORRECTION_BIAS]
  assert bias.shape == (8,) and not bias.any()
  grads = jax.grad(lambda p: model.apply({"params": p}, tokens).std())(params)
  assert not grads["block_0"]["mlp"][moe.CORRECTION_BIAS].any()
  assert np.abs(grads["block_0"]["mlp"]["router"]["kernel"]).max() > 0
  _, sown = model.apply({"params": params}, tokens, mutable=["intermediates"])
  loads = moe.expert_loads(sown["intermediates"])
  assert set(loads) == {"block_0/mlp", "block_1/mlp"}
  moved = moe.update_correction_biases(params, loads, 0.01)
  for layer in ("block_0", "block_1"):
    step = np.asarray(moved[layer]["mlp"][moe.CORRECTION_BIAS])
    np.testing.assert_allclose(step, _rule(loads[f"{layer}/mlp"]), atol=1e-7)
  # Stacked layers: one bias row per layer, each moved by its own layer's load.
  from attention_jax.models import layouts
  scanned = models.with_options(model, scan_layers=True)
  stacked = layouts.stack(params)
  _, sown = scanned.apply({"params": stacked}, tokens, mutable=["intermediates"])
  loads = moe.expert_loads(sown["intermediates"])
  assert loads["blocks/mlp"].shape == (2, 8)
  moved = moe.update_correction_biases(stacked, loads, 0.01)
  want = [_rule(load) for load in np.asarray(loads["blocks/mlp"])]
  np.testing.assert_allclose(moved["blocks"]["mlp"][moe.CORRECTION_BIAS], np.stack(want),
                             atol=1e-7)
  assert np.abs(want).max() == pytest.approx(0.01)  # some expert off the mean moved


def _rule(load, rate=0.01):
  """The balancing rule in numpy: +rate below the mean load, -rate above (ties stay)."""
  below = np.mean(load) - np.asarray(load)
  return rate * np.where(np.abs(below) > 1e-6, np.sign(below), 0.0)


def test_shared_experts_and_dense_first_layers():
  """DeepSeek's n_shared_experts (a dense SwiGLU every token takes) and first_k_dense_replace;
  Qwen2-MoE's sigmoid gate on the shared expert. The shared path's output is the difference
  from the routed experts alone. Under scan_layers the dense layers stay unrolled below the
  stack, with the same outputs, and the layouts convert both ways."""
  model = models.create("mixtral-tiny", depth=3, n_shared_experts=2, first_k_dense_replace=1,
                        shared_expert_gate=True, expert_mlp_dim=8)
  params = model.init(jax.random.key(0), *model.example_inputs())["params"]
  assert "router" not in params["block_0"]["mlp"]
  assert params["block_0"]["mlp"]["fc1"]["kernel"].shape == (32, 24)  # mlp_dim
  mlp = params["block_1"]["mlp"]
  assert mlp["shared_experts"]["gate"]["kernel"].shape == (32, 16)  # 2 experts of 8
  assert mlp["shared_expert_gate"]["kernel"].shape == (32, 1)
  from attention_jax.layers.mlp import Mlp
  layer = moe.MoeMlp(model.config)
  x = jax.random.normal(jax.random.key(2), (3, 5, 32))
  both = layer.apply({"params": mlp}, x)
  routed = moe.MoeMlp(model.config.replace(n_shared_experts=0, shared_expert_gate=False)
                      ).apply({"params": {k: v for k, v in mlp.items()
                                          if k in ("router", "experts")}}, x)
  shared = Mlp(16, activation="silu", gated=True, use_bias=False).apply(
      {"params": mlp["shared_experts"]}, x)
  gate = jax.nn.sigmoid(x @ mlp["shared_expert_gate"]["kernel"])
  np.testing.assert_allclose(both, routed + gate * shared, atol=1e-5)
  from attention_jax.models import layouts
  scanned = models.with_options(model, scan_layers=True)
  stacked = layouts.to_layout(params, jax.eval_shape(
      lambda: scanned.init(jax.random.key(0), *scanned.example_inputs()))["params"])
  assert set(stacked) >= {"block_0", "blocks"} and "block_1" not in stacked
  assert stacked["blocks"]["mlp"]["experts"]["gate"].shape == (2, 4, 32, 8)  # layers 1, 2
  tokens = scanned.example_inputs()[0]
  np.testing.assert_allclose(scanned.apply({"params": stacked}, tokens),
                             model.apply({"params": params}, tokens), atol=1e-5)
  assert jax.tree.all(jax.tree.map(np.array_equal, layouts.to_layout(stacked, params), params))
  groups = scanned.layer_groups()
  assert groups.blocks == ("block_0",) and groups.stacks == (("blocks", 1, 2, 1),)
