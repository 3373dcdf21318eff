"""Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3, DeepSeek-V2/V3, Mixtral, Qwen2-MoE and
Qwen3-MoE checkpoints against Hugging Face transformers (PyTorch, CPU):
random-initialised models built by transformers itself, saved, loaded by us; and ours
exported and loaded by transformers. Logits and greedy generations must agree."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from attention_jax import models, pretrained

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            initializer_range=0.3)  # large weights: logits far from uniform
_MLA = dict(num_key_value_heads=4, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4,
            v_head_dim=6, first_k_dense_replace=2)
CASES = {
    "llama-gqa-llama3-rope": ("LlamaConfig", "LlamaForCausalLM", dict(
        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=16))),
    "mistral-sliding-window": ("MistralConfig", "MistralForCausalLM", dict(
        sliding_window=4, rope_theta=10000.0, tie_word_embeddings=False)),
    "qwen2-qkv-bias-tied": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True)),
    "llama-linear-rope-tied": ("LlamaConfig", "LlamaForCausalLM", dict(
        rope_scaling=dict(rope_type="linear", factor=2.0), tie_word_embeddings=True,
        num_key_value_heads=1)),
    "qwen2-yarn-rope": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        rope_theta=1e6, tie_word_embeddings=False, rope_scaling=dict(
            rope_type="yarn", factor=4.0, original_max_position_embeddings=16))),
    "qwen3-qk-norm-head-dim": ("Qwen3Config", "Qwen3ForCausalLM", dict(  # head_dim != 32 / 4
        head_dim=16, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True)),
    # Caps small enough to act; a window shorter than the input and the generation.
    "gemma2-soft-caps-alternating-window": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        head_dim=16, query_pre_attn_scalar=12, sliding_window=4, attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0, num_hidden_layers=4)),
    "gemma3-qk-norm-two-rotary-bases": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        head_dim=8, sliding_window=4, num_hidden_layers=3, tie_word_embeddings=False,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={"full_attention": dict(rope_type="linear", factor=2.0,
                                                rope_theta=1e6),
                         "sliding_attention": dict(rope_type="default", rope_theta=100.0)})),
    # Latent attention with dense MLPs (first_k_dense_replace = depth): V2's interleaved
    # rotary with a full query projection and DeepSeek's YaRN (mscale_all_dim scales the
    # softmax); V3's query latent, attention biases and its rotate-half layout.
    "deepseek-v2-interleaved-yarn": ("DeepseekV2Config", "DeepseekV2ForCausalLM", dict(
        _MLA, q_lora_rank=None, tie_word_embeddings=False, rope_parameters=dict(
            rope_type="yarn", rope_theta=10000.0, factor=4.0,
            original_max_position_embeddings=16, mscale=0.707, mscale_all_dim=0.707))),
    # 4 experts, 2 per token (transformers 5's fused expert tensors), sliding window 4.
    "mixtral-experts-window": ("MixtralConfig", "MixtralForCausalLM", dict(
        num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
        tie_word_embeddings=False)),
    "deepseek-v3-query-latent-biases": ("DeepseekV3Config", "DeepseekV3ForCausalLM", dict(
        _MLA, q_lora_rank=12, attention_bias=True, rope_interleave=False)),
    # Mixtures with a dense first layer: V3's sigmoid router limited to 2 of 4 groups, with
    # its correction bias (set non-zero below), scaling and a shared expert; V2's softmax
    # router limited to groups (group_limited_greedy), unnormalised, two shared experts.
    "deepseek-v3-experts-grouped-bias": ("DeepseekV3Config", "DeepseekV3ForCausalLM", dict(
        _MLA, q_lora_rank=12, first_k_dense_replace=1, n_routed_experts=8, n_group=4,
        topk_group=2, num_experts_per_tok=3, moe_intermediate_size=16, n_shared_experts=1,
        routed_scaling_factor=2.5, norm_topk_prob=True)),
    "deepseek-v2-experts-group-limited": ("DeepseekV2Config", "DeepseekV2ForCausalLM", dict(
        _MLA, q_lora_rank=None, first_k_dense_replace=1, n_routed_experts=8, n_group=4,
        topk_group=2, topk_method="group_limited_greedy", num_experts_per_tok=2,
        moe_intermediate_size=16, n_shared_experts=2, routed_scaling_factor=1.5)),
    # Qwen2-MoE: Q/K/V biases, a shared expert behind its sigmoid gate, top-k unnormalised;
    # Qwen3-MoE: QK-norm, renormalised top-k.
    "qwen2-moe-gated-shared-expert": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
        shared_expert_intermediate_size=32, norm_topk_prob=False, tie_word_embeddings=False)),
    "qwen3-moe-qk-norm": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, head_dim=16,
        norm_topk_prob=True, tie_word_embeddings=False)),
    # GPT-OSS: learned sinks, window 4 on alternate layers, attention, router and expert
    # biases, the clamped SwiGLU (a limit of 0.5, so that it acts), YaRN untruncated.
    "gpt-oss-sinks-biases-clamp": ("GptOssConfig", "GptOssForCausalLM", dict(
        head_dim=8, num_local_experts=4, num_experts_per_tok=2, intermediate_size=16,
        sliding_window=4, num_hidden_layers=3, swiglu_limit=0.5)),
}
YARN = [  # rope parameters besides rope_type and rope_theta
    dict(factor=4.0, original_max_position_embeddings=16),  # Qwen2.5's form
    dict(factor=40.0, original_max_position_embeddings=32, beta_fast=16.0, beta_slow=2.0,
         mscale=0.707, mscale_all_dim=1.0),  # DeepSeek's form (its mscale values)
    dict(factor=2.0, original_max_position_embeddings=24, attention_factor=1.3,
         truncate=False),
]
LENGTH = 12


def _hf_model(case, seed=0):
  config_name, model_name, options = CASES[case]
  config = getattr(transformers, config_name)(**{**TINY, **options})
  torch.manual_seed(seed)
  model = getattr(transformers, model_name)(config).eval()
  with torch.no_grad():  # biases and norm weights start constant (Gemma's at 0 for 1 + 0)
    for name, p in model.named_parameters():
      if name.endswith(("proj.bias", "mqa.bias", "norm.weight", "_bias", "router.bias",
                        "sinks")):
        p.add_(torch.randn_like(p) * 0.5)
    for name, b in model.named_buffers():  # zero at initialisation: it would test nothing
      if name.endswith("e_score_correction_bias"):
        b.copy_(torch.randn_like(b) * 0.3)
  return model


def _batch():
  """Two rows: one full, one left-padded by 5 (mask 0), with positions from the first real
  token, as batched generation pads prompts."""
  tokens = np.random.default_rng(0).integers(0, TINY["vocab_size"], (2, LENGTH))
  mask = np.ones((2, LENGTH), np.int64)
  mask[1, :5] = 0
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  return tokens, mask, positions


def _hf_logits(model, tokens, mask, positions):
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(positions)).logits.numpy()


def _our_logits(model, params, tokens, mask, positions):
  return np.asarray(model.apply({"params": params}, jnp.asarray(tokens),
                                positions=jnp.asarray(positions),
                                segment_ids=jnp.asarray(mask)))


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_hugging_face_checkpoints_load_export_and_generate_alike(tmp_path, case):
  hf = _hf_model(case)
  hf.save_pretrained(tmp_path / "hf")
  model, params, _ = pretrained.load(str(tmp_path / "hf"))
  tokens, mask, positions = _batch()
  want = _hf_logits(hf, tokens, mask, positions)
  real = mask.astype(bool)
  assert want[real].std() > 0.5  # a test that uniform logits could not pass
  got = _our_logits(model, params, tokens, mask, positions)
  np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=1e-4)
  if model.config.first_k_dense_replace:  # DeepSeek: scanned, its dense layers below
    scanned, stacked, _ = pretrained.load(str(tmp_path / "hf"), scan_layers=True)
    assert "block_0" in stacked and ("blocks" in stacked) == (
        model.config.first_k_dense_replace < model.config.depth)
    np.testing.assert_allclose(_our_logits(scanned, stacked, tokens, mask, positions)[real],
                               got[real], atol=1e-5)

  # The reverse: ours exported (sharded, to exercise the index) and loaded by transformers.
  pretrained.export(model, params, str(tmp_path / "ours"), max_shard_bytes=40_000)
  assert (tmp_path / "ours" / "model.safetensors.index.json").exists()
  back = type(hf).from_pretrained(tmp_path / "ours").eval()
  np.testing.assert_allclose(_hf_logits(back, tokens, mask, positions)[real], got[real],
                             atol=1e-4, rtol=1e-4)

  # Greedy generation of 20 tokens: the same tokens from both.
  prompt = tokens[:1, :6]
  with torch.no_grad():
    hf_tokens = hf.generate(torch.tensor(prompt), attention_mask=torch.ones_like(
        torch.tensor(prompt)), max_new_tokens=20, do_sample=False, pad_token_id=0,
        eos_token_id=None)[:, prompt.shape[1]:].numpy()
  ours = models.generate(model, params, jnp.asarray(prompt), max_new_tokens=20,
                         rng=jax.random.key(0), temperature=0.0)
  np.testing.assert_array_equal(np.asarray(ours), hf_tokens)


@pytest.mark.parametrize("layout", ["rope_parameters", "rope_scaling"])
@pytest.mark.parametrize("parameters", YARN, ids=["qwen", "deepseek", "attention_factor"])
def test_yarn_frequencies_and_attention_factor_equal_transformers(layout, parameters):
  """YaRN read from config.json (transformers 5's `rope_parameters` or 4.x's `rope_scaling`)
  gives transformers' own inverse frequencies and cos/sin factor."""
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  from attention_jax.kernels import positional
  from attention_jax.pretrained import formats
  from attention_jax.pretrained.json_file import JsonObject
  config = transformers.LlamaConfig(**TINY, rope_parameters=dict(
      rope_type="yarn", rope_theta=5e5, **parameters))
  want_freq, want_factor = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
  fields = {"max_position_embeddings": TINY["max_position_embeddings"]}
  if layout == "rope_parameters":
    fields["rope_parameters"] = dict(rope_type="yarn", rope_theta=5e5, **parameters)
  else:
    fields.update(rope_theta=5e5, rope_scaling=dict(type="yarn", **parameters))
  theta, scaling = formats._rope(JsonObject(fields, "config.json"))
  head_dim = TINY["hidden_size"] // TINY["num_attention_heads"]
  np.testing.assert_allclose(positional.rotary_frequencies(head_dim, theta, scaling),
                             want_freq.numpy(), rtol=1e-6)
  assert scaling.rotary_scale == pytest.approx(want_factor, rel=1e-12)
  assert want_factor != 1.0 and not np.allclose(  # both parts of YaRN act here
      want_freq.numpy(), positional.rotary_frequencies(head_dim, theta))
  written = formats._rope_config(models.create("llama-tiny", rotary_base=theta,
                                               rope_scaling=scaling).config)
  for kept in ("rope_parameters", "rope_scaling"):  # each layout we write reads back alone
    alone = {k: v for k, v in written.items() if k == kept or k == "rope_theta"}
    assert formats._rope(JsonObject(alone, "config.json")) == (theta, scaling)


def test_gemma3_configs_of_transformers_4_load_as_those_of_5(tmp_path):
  """4.x wrote Gemma 3's rotary bases as rope_theta + rope_local_base_freq (+ rope_scaling
  for the full layers) and its layers as sliding_window_pattern; 5 writes rope_parameters per
  layer type and layer_types. Both give one model."""
  import json
  hf = _hf_model("gemma3-qk-norm-two-rotary-bases")
  hf.save_pretrained(tmp_path)
  model, params, _ = pretrained.load(str(tmp_path))
  config = json.loads((tmp_path / "config.json").read_text())
  assert "full_attention" in config["rope_parameters"]  # written by transformers 5
  for name in ("rope_parameters", "layer_types"):
    del config[name]
  config.update(rope_theta=1e6, rope_local_base_freq=100.0, sliding_window_pattern=3,
                rope_scaling=dict(rope_type="linear", factor=2.0))
  (tmp_path / "config.json").write_text(json.dumps(config))
  old, old_params, _ = pretrained.load(str(tmp_path))
  assert old.config == model.config
  assert model.config.layer_types == ("sliding", "sliding", "full")
  assert model.config.local_rotary_base == 100.0
  tokens, mask, positions = _batch()
  np.testing.assert_array_equal(_our_logits(old, old_params, tokens, mask, positions),
                                _our_logits(model, params, tokens, mask, positions))


def test_models_no_checkpoint_format_expresses_are_refused_on_export(tmp_path):
  cases = [("llama-tiny", dict(post_norms=True), "post_norms.*cannot express.*as a Gemma"),
           ("gpt-tiny", dict(attn_logits_soft_cap=5.0), "attn_logits_soft_cap"),
           ("llama-tiny", dict(norm="rms_unit_offset"), "rms_unit_offset"),
           ("gemma-tiny", dict(learned_sinks=True), "learned_sinks"),
           ("gemma-tiny", dict(norm="rms"), "the Gemma formats need"),
           ("gemma-tiny", dict(query_pre_attn_scalar=12.5), "as an integer"),
           ("gemma-tiny", dict(local_rotary_base=100.0), "Gemma 2, which has one rotary"),
           ("llama-tiny", dict(num_kv_heads=None, kv_lora_rank=16, qk_nope_head_dim=8,
                               qk_rope_head_dim=4, v_head_dim=6),
            "kv_lora_rank=16, which Llama checkpoints cannot express.*as a Deepseek"),
           ("deepseek-tiny", dict(mlp_bias=True), "DeepSeek format has attention biases"),
           ("deepseek-tiny", dict(post_norms=True), "post_norms=True, which Deepseek")]
  for preset, options, message in cases:
    model = models.create(preset, **options)
    params = model.init(jax.random.key(0), *model.example_inputs())["params"]
    with pytest.raises(ValueError, match=message):
      pretrained.export(model, params, str(tmp_path))


def test_checkpoints_we_cannot_read_say_why(tmp_path):
  import json
  import os
  model = models.create("llama-tiny")
  params = model.init(jax.random.key(0), *model.example_inputs())["params"]
  pretrained.export(model, params, str(tmp_path / "sharded"), max_shard_bytes=20_000)
  shards = sorted(p for p in os.listdir(tmp_path / "sharded") if p.startswith("model-"))
  assert len(shards) > 1
  os.remove(tmp_path / "sharded" / shards[-1])
  with pytest.raises(FileNotFoundError, match=f"lacks the shard\\(s\\) {shards[-1]}"):
    pretrained.load(str(tmp_path / "sharded"))
  pretrained.export(model, params, str(tmp_path / "other"))
  config = json.loads((tmp_path / "other" / "config.json").read_text())
  (tmp_path / "other" / "config.json").write_text(json.dumps({**config,
                                                              "model_type": "falcon"}))
  with pytest.raises(ValueError, match="model_type 'falcon'; supported: .*gemma2, "
                     "gemma3_text, gpt2, gpt_oss, llama, mistral, mixtral, qwen2.*GptOssForCausalLM"):
    pretrained.load(str(tmp_path / "other"))
  (tmp_path / "other" / "config.json").write_text(json.dumps({**config,
                                                              "model_type": "gemma3"}))
  with pytest.raises(ValueError, match="'gemma3' .*text and vision.*only Gemma 3's "
                     "text-only models"):
    pretrained.load(str(tmp_path / "other"))


def test_mixtral_checkpoints_in_transformers_fused_expert_layout_load(tmp_path):
  """transformers 5 holds a Mixtral's experts fused (mlp.experts.gate_up_proj, down_proj)
  and saves them one tensor per expert (block_sparse_moe.experts.N.w1/w3/w2, the case
  above); a checkpoint of its in-memory tensors, as other tools write them, loads too."""
  import json
  from safetensors.numpy import save_file
  hf = _hf_model("mixtral-experts-window")
  state = {name: t.detach().numpy() for name, t in hf.state_dict().items()}
  assert "model.layers.0.mlp.experts.gate_up_proj" in state
  tmp_path.mkdir(exist_ok=True)
  save_file(state, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
  model, params, _ = pretrained.load(str(tmp_path))
  tokens, mask, positions = _batch()
  real = mask.astype(bool)
  np.testing.assert_allclose(_our_logits(model, params, tokens, mask, positions)[real],
                             _hf_logits(hf, tokens, mask, positions)[real], atol=1e-4,
                             rtol=1e-4)


def test_mixture_checkpoints_we_cannot_read_faithfully_say_why(tmp_path):
  """Mixture fields whose meaning is ambiguous or that no model here holds are refused,
  naming the file and the field; so are models no mixture format expresses, on export."""
  import json
  cases = [("deepseek-v2-experts-group-limited", {"norm_topk_prob": True},
            "norm_topk_prob=true on DeepSeek-V2 is ambiguous"),
           ("deepseek-v2-experts-group-limited", {"topk_method": "noaux_tc"},
            "topk_method 'noaux_tc' is not DeepSeek-V2's"),
           ("qwen2-moe-gated-shared-expert", {"decoder_sparse_step": 2},
            "decoder_sparse_step != 1 or mlp_only_layers"),
           ("qwen2-moe-gated-shared-expert", {"shared_expert_intermediate_size": 24},
            "shared_expert_intermediate_size=24 is not a multiple of "
            "moe_intermediate_size=16"),
           ("deepseek-v3-experts-grouped-bias", {"n_group": "4"},
            "field 'n_group' is '4' \\(a string\\), expected an integer >= 1")]
  for case in {case for case, _, _ in cases}:
    _hf_model(case).save_pretrained(tmp_path / case)
  for case, change, message in cases:
    written = json.loads((tmp_path / case / "config.json").read_text())
    (tmp_path / case / "config.json").write_text(json.dumps({**written, **change}))
    with pytest.raises(ValueError, match=message):
      pretrained.load(str(tmp_path / case))
    (tmp_path / case / "config.json").write_text(json.dumps(written))

  refused = [("mixtral-tiny", dict(router_scoring="sigmoid"),
              "MixtralForCausalLM format needs .*router_scoring.*'sigmoid'"),
             ("mixtral-tiny", dict(n_shared_experts=1),
              "MixtralForCausalLM format needs .*n_shared_experts"),
             ("deepseek-tiny", dict(num_experts=4, experts_per_token=2,
                                    router_scoring="sigmoid"),
              "DeepseekV3ForCausalLM format's router needs .*router_correction_bias"),
             ("llama-tiny", dict(num_experts=4, experts_per_token=2),
              "num_experts=4, which Llama checkpoints cannot express.*as a Mixtral")]
  for preset, options, message in refused:
    model = models.create(preset, **options)
    params = model.init(jax.random.key(0), *model.example_inputs())["params"]
    with pytest.raises(ValueError, match=message):
      pretrained.export(model, params, str(tmp_path / "export"))


def test_weights_keep_their_dtype_and_load_straight_into_a_mesh(tmp_path):
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  model = models.create("llama-tiny", param_dtype=jnp.bfloat16)
  params = model.init(jax.random.key(0), *model.example_inputs())["params"]
  pretrained.export(model, params, str(tmp_path))
  loaded_model, loaded, _ = pretrained.load(str(tmp_path))
  assert loaded_model.config.param_dtype == jnp.bfloat16
  assert {x.dtype for x in jax.tree.leaves(loaded)} == {jnp.dtype(jnp.bfloat16)}
  _, as_f32, _ = pretrained.load(str(tmp_path), dtype="float32")
  assert {x.dtype for x in jax.tree.leaves(as_f32)} == {jnp.dtype(jnp.float32)}
  mesh = Mesh(np.array(jax.devices()[:4]), ("fsdp",))
  path = ("block_0", "mlp", "fc1", "kernel")
  sharding = NamedSharding(mesh, P("fsdp", None))
  _, placed, _ = pretrained.load(str(tmp_path), shardings={path: sharding})
  kernel = placed["block_0"]["mlp"]["fc1"]["kernel"]
  assert kernel.sharding == sharding and len(kernel.addressable_shards) == 4
  np.testing.assert_array_equal(np.asarray(kernel), np.asarray(loaded["block_0"]["mlp"]["fc1"][
      "kernel"]))


def test_experts_stream_one_tensor_at_a_time_into_their_sharded_layout(tmp_path):
  """A mixture's checkpoint (one tensor per expert) loads with the experts' weights placed
  straight into a mesh (experts split 4 ways): each expert's tensor is written into the
  sharded array as soon as it is read, before the next tensor is read, and the result
  equals the unsharded load."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from attention_jax.pretrained import convert
  model = models.create("mixtral-tiny", num_experts=4)
  params = model.init(jax.random.key(0), *model.example_inputs())["params"]
  pretrained.export(model, params, str(tmp_path))
  _, whole, _ = pretrained.load(str(tmp_path))
  mesh = Mesh(np.array(jax.devices()[:4]), ("expert",))
  sharding = NamedSharding(mesh, P("expert", None, None))
  paths = [("block_0", "mlp", "experts", name) for name in ("gate", "fc1", "fc2")]

  events, read = [], convert.tensors_to_params
  def logged(tensors, *args, place_slice, **kwargs):
    class Reads(dict):
      def __getitem__(self, name):
        events.append(("read", name))
        return tensors[name]
    def placing(path, stacked, index, array, shape):
      events.append(("placed", path, index))
      return place_slice(path, stacked, index, array, shape)
    return read(Reads({n: None for n in tensors}), *args, place_slice=placing, **kwargs)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(convert, "tensors_to_params", logged)
    _, placed, _ = pretrained.load(str(tmp_path), shardings={p: sharding for p in paths})
  for path in paths:
    array = placed[path[0]][path[1]][path[2]][path[3]]
    assert array.sharding == sharding and len(array.addressable_shards) == 4
    np.testing.assert_array_equal(np.asarray(array),
                                  np.asarray(whole[path[0]][path[1]][path[2]][path[3]]))
  expert_reads = [i for i, e in enumerate(events) if e[0] == "read" and ".experts." in e[1]]
  assert len(expert_reads) == 2 * 4 * 3  # layers x experts x (gate, up, down)
  for i in expert_reads:  # every expert tensor is placed before anything else is read
    assert events[i + 1][0] == "placed", events[i:i + 2]


def test_shardings_for_parameters_the_model_lacks_are_refused(tmp_path):
  """A sharding keyed by a stacked path (blocks/...) would otherwise be ignored silently."""
  from jax.sharding import SingleDeviceSharding
  model = models.create("llama-tiny")
  params = model.init(jax.random.key(0), *model.example_inputs())["params"]
  pretrained.export(model, params, str(tmp_path))
  stacked = ("blocks", "mlp", "fc1", "kernel")
  with pytest.raises(ValueError, match="shardings name 1 parameter\\(s\\) the model does not "
                     "have, e.g. blocks/mlp/fc1/kernel; name the unrolled parameters"):
    pretrained.load(str(tmp_path), scan_layers=True,
                    shardings={stacked: SingleDeviceSharding(jax.devices()[0])})
