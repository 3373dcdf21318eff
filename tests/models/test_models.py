"""Model invariants: cached decoding equals a full pass, segment memory equals a long pass,
kernels are interchangeable, padding does not leak."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from attention_jax import models
from attention_jax.models import layouts
from attention_jax.models.gemma import gemma_layer_types
from attention_jax.models.generation import init_cache

TOKENS = jax.random.randint(jax.random.key(1), (2, 12), 0, 128)


def init(model, *inputs):
  return model.init(jax.random.key(0), *inputs)["params"]


@pytest.mark.parametrize("position,kernel", [
    ("learned", "dot_product"), ("learned", "flash"), ("rotary", "dot_product"),
    ("rotary", "flash"), ("alibi", "dot_product")])  # ALiBi is a bias: flash takes none
def test_gpt_prefill_then_cached_steps_equal_full_forward(position, kernel):
  model = models.create("gpt-tiny", position=position, kernel=kernel)
  params = init(model, TOKENS)
  np.testing.assert_allclose(prefill_then_steps(model, params, TOKENS)[0],
                             model.apply({"params": params}, TOKENS), atol=2e-5)


def prefill_then_steps(model, params, tokens, prefill: int = 5):
  """(logits of a cached prefill of `prefill` tokens then one-token steps, the initial
  cache)."""
  decoder = models.with_options(model, decode=True)
  cache = init_cache(decoder, jnp.zeros_like(tokens))
  apply = jax.jit(lambda cache, tokens: decoder.apply({"params": params, "cache": cache},
                                                      tokens, mutable=["cache"]))
  logits, state = apply(cache, tokens[:, :prefill])
  steps = [logits]
  for t in range(prefill, tokens.shape[1]):  # one compiled step for all
    logits, state = apply(state["cache"], tokens[:, t:t + 1])
    steps.append(logits)
  return jnp.concatenate(steps, axis=1), cache


def test_generate_is_deterministic_and_follows_its_settings():
  model = models.create("gpt-tiny")
  params = init(model, TOKENS)
  prompt = TOKENS[:, :4]
  sample = lambda key, **kw: models.generate(model, params, prompt, max_new_tokens=6,
                                             rng=jax.random.key(key), **kw)
  np.testing.assert_array_equal(sample(0), sample(0))
  assert not np.array_equal(sample(0), sample(1))
  greedy = sample(0, temperature=0.0)
  np.testing.assert_array_equal(sample(5, top_k=1), greedy)
  # Greedy decoding by hand: argmax of the full forward, one token at a time (right-padded to
  # one length, which a causal model's earlier logits do not see: one compiled forward).
  forward = jax.jit(lambda tokens: model.apply({"params": params}, tokens))
  tokens = jnp.zeros((prompt.shape[0], 10), prompt.dtype).at[:, :4].set(prompt)
  for t in range(4, 10):
    tokens = tokens.at[:, t].set(jnp.argmax(forward(tokens)[:, t - 1], -1))
  np.testing.assert_array_equal(greedy, tokens[:, 4:])
  with pytest.raises(ValueError, match="exceeds the model's 64 positions"):
    models.generate(model, params, prompt, max_new_tokens=61, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="top_p must be in"):
    sample(0, top_p=1.5)


def test_top_p_keeps_smallest_set_reaching_p():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  draws = jax.vmap(lambda k: models.sample_logits(logits, k, top_p=0.8))(
      jax.random.split(jax.random.key(0), 500))
  assert set(np.unique(draws)) == {0, 1}


def test_encoder_decoder_incremental_equals_teacher_forced_and_beam_scores():
  model = models.create("transformer-tiny", dropout_rate=0.0)
  src, tgt = TOKENS[:, :9], TOKENS[:, 3:10]
  lengths = jnp.array([9, 6])
  params = init(model, src, tgt, lengths)
  full = model.apply({"params": params}, src, tgt, lengths)
  decoder = models.with_options(model, decode=True)
  encoded = model.apply({"params": params}, src, lengths, method="encode")
  cache = init_cache(decoder, jnp.zeros_like(tgt), encoded, lengths, method="decode_logits")
  steps = []
  for t in range(tgt.shape[1]):
    logits, state = decoder.apply({"params": params, "cache": cache}, tgt[:, t:t + 1],
                                  encoded, lengths, method="decode_logits", mutable=["cache"])
    cache = state["cache"]
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=2e-5)

  tokens, scores = models.beam_search(model, params, src, beam_size=3, max_len=6, bos_id=1,
                                      eos_id=2, source_lengths=lengths, length_penalty=0.0)
  # The beam's score is the model's log-probability of the sequence it returns.
  target_in = jnp.concatenate([jnp.ones((2, 1), jnp.int32), tokens[:, :-1]], axis=1)
  log_probs = jax.nn.log_softmax(model.apply({"params": params}, src, target_in, lengths))
  picked = jnp.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]
  alive = jnp.cumsum(tokens == 2, axis=1) - (tokens == 2) == 0  # up to and incl. first EOS
  np.testing.assert_allclose(scores, jnp.sum(picked * alive, axis=1), atol=1e-4)
  greedy = models.greedy_decode(model, params, src, max_len=6, bos_id=1, eos_id=2,
                                source_lengths=lengths)
  one_beam, _ = models.beam_search(model, params, src, beam_size=1, max_len=6, bos_id=1,
                                   eos_id=2, source_lengths=lengths, length_penalty=0.0)
  np.testing.assert_array_equal(greedy, one_beam)


def test_transformer_xl_segments_with_memory_equal_one_long_pass():
  model = models.create("transformer-xl-tiny", mem_len=6, dropout_rate=0.0)
  tokens = jax.random.randint(jax.random.key(2), (2, 3 * 5), 0, 128)
  params = init(model, tokens[:, :5])
  memory, outputs = None, []
  for s in range(3):
    out, memory = model.apply({"params": params}, tokens[:, 5 * s:5 * (s + 1)], memory)
    outputs.append(out)
    assert memory.shape == (2, 2, min(6, 5 * (s + 1)), 32)
  # One pass: position p of segment k sees keys [start_k - mem_len, p].
  q = np.arange(15)[:, None]
  k = np.arange(15)[None, :]
  mask = (k >= (q // 5) * 5 - 6) & (k <= q)
  long, _ = model.apply({"params": params}, tokens, mask=jnp.asarray(mask)[None, None])
  np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), long, atol=2e-5)
  # A longer evaluation memory is a call argument; parameters do not change.
  _, memory = model.apply({"params": params}, tokens[:, :5], mem_len=20)
  assert memory.shape[2] == 5


def test_transformer_xl_gradients_do_not_flow_into_memory():
  model = models.create("transformer-xl-tiny", dropout_rate=0.0)
  params = init(model, TOKENS[:, :4])
  memory = jax.random.normal(jax.random.key(3), (2, 2, 5, 32))
  grad = jax.grad(lambda m: model.apply({"params": params}, TOKENS[:, :4], m)[0].sum())(memory)
  np.testing.assert_array_equal(grad, 0.0)
  log_probs, _ = model.apply({"params": params}, TOKENS[:, :4], memory)
  np.testing.assert_allclose(jnp.exp(log_probs).sum(-1), 1.0, atol=1e-5)  # adaptive softmax


INPUTS = {
    "bert-tiny": lambda: (TOKENS,),
    "gpt-tiny": lambda: (TOKENS,),
    "transformer-tiny": lambda: (TOKENS[:, :9], TOKENS[:, 2:8]),
    "vit-tiny": lambda: (jax.random.normal(jax.random.key(4), (2, 16, 16, 1)),),
}


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_models_give_same_outputs_with_dot_product_and_flash(name):
  inputs = INPUTS[name]()
  model = models.create(name)
  params = init(model, *inputs)
  want = model.apply({"params": params}, *inputs)
  got = models.create(name, kernel="flash").apply({"params": params}, *inputs)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), got, want)


def test_padding_does_not_change_real_positions():
  bert = models.create("bert-tiny")
  params = init(bert, TOKENS)
  short = bert.apply({"params": params}, TOKENS[:, :7])["hidden"]
  padded = jnp.concatenate([TOKENS[:, :7], jnp.zeros((2, 5), jnp.int32)], axis=1)
  mask = jnp.arange(12)[None] < 7
  long = bert.apply({"params": params}, padded, attention_mask=jnp.broadcast_to(mask, (2, 12)))
  np.testing.assert_allclose(long["hidden"][:, :7], short, atol=2e-5)

  translate = models.create("transformer-tiny")
  src, tgt = TOKENS[:, :6], TOKENS[:, 6:]
  params = init(translate, src, tgt)
  want = translate.apply({"params": params}, src, tgt)
  padded_src = jnp.concatenate([src, jnp.zeros((2, 4), jnp.int32)], axis=1)
  got = translate.apply({"params": params}, padded_src, tgt, jnp.array([6, 6]))
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_model_input_errors():
  vit = models.create("vit-tiny")
  with pytest.raises(ValueError, match="built for 16x16"):
    vit.init(jax.random.key(0), jnp.ones((1, 20, 20, 1)))
  with pytest.raises(ValueError, match="not divisible by the patch size 3"):
    models.create("vit-tiny", patch_size=3, image_size=16).init(
        jax.random.key(0), jnp.ones((1, 16, 16, 1)))
  gpt = models.create("gpt-tiny")
  with pytest.raises(ValueError, match="sequence length 65 exceeds the model's maximum of 64"):
    gpt.init(jax.random.key(0), jnp.zeros((1, 65), jnp.int32))
  with pytest.raises(ValueError, match="width 30 is not divisible by num_heads=4"):
    models.create("bert-tiny", width=30).init(jax.random.key(0), TOKENS)
  with pytest.raises(ValueError, match="incompatible with this layer: it needs an additive"):
    models.create("gpt-tiny", position="alibi", kernel="flash").init(jax.random.key(0), TOKENS)


def test_bert_mlm_head_is_tied_and_counts_like_the_reference():
  bert = models.create("bert-tiny")
  variables = bert.init(jax.random.key(0), TOKENS, method=models.Bert.pretrain)
  params = variables["params"]
  assert set(params) - set(init(bert, TOKENS)) == {"mlm_head", "mlm_bias"}
  out = bert.apply({"params": params}, TOKENS, method=models.Bert.pretrain)
  head = bert.apply({"params": params}, out["hidden"],
                    method=lambda m, h: m.mlm_head(h))
  table = params["embed"]["token"]["embedding"]
  np.testing.assert_allclose(out["mlm_logits"], head @ table.T + params["mlm_bias"]["bias"],
                             atol=1e-5)
  # bert-base with the MLM head = HF BertForPreTraining (110,106,428) minus its 1,538-parameter
  # next-sentence head.
  base = models.create("bert-base")
  shapes = jax.eval_shape(lambda: base.init(jax.random.key(0), *base.example_inputs(),
                                            method=models.Bert.pretrain))
  assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == 110_106_428 - 1_538


def test_gpt_on_packed_documents_equals_each_document_alone():
  model = models.create("gpt-tiny")
  params = init(model, TOKENS)
  docs = [TOKENS[0, :5], TOKENS[1, :7]]
  packed = jnp.concatenate(docs)[None]
  segment_ids = jnp.array([[1] * 5 + [2] * 7])
  positions = jnp.array([list(range(5)) + list(range(7))])
  for kernel in ("dot_product", "flash"):
    logits = models.with_options(model, kernel=kernel).apply({"params": params}, packed,
                                              positions=positions, segment_ids=segment_ids)
    for doc, start in zip(docs, (0, 5)):
      alone = model.apply({"params": params}, doc[None])
      np.testing.assert_allclose(logits[:, start:start + len(doc)], alone, atol=2e-5)


@pytest.mark.parametrize("name", ["gpt-tiny", "bert-tiny", "vit-tiny", "transformer-tiny",
                                  "transformer-xl-tiny"])
def test_remat_recomputes_blocks_and_keeps_parameters_and_gradients(name):
  model = models.create(name)
  inputs = model.example_inputs()
  params = model.init(jax.random.key(0), *inputs)

  def grads(remat):
    def loss(p):
      out = models.with_options(model, remat=remat).apply(p, *inputs)
      return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(out)
                 if jnp.issubdtype(x.dtype, jnp.floating))
    return jax.grad(loss)(params), str(jax.make_jaxpr(jax.grad(loss))(params))

  reference, plain = grads("none")
  assert "checkpoint" not in plain and "remat" not in plain
  got, program = grads("full")  # "dots" trains in tests/training/test_parallel.py
  assert "checkpoint" in program or "remat" in program
  for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(got)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  with pytest.raises(ValueError, match="remat must be one of"):
    models.with_options(model, remat="some").apply(params, *inputs)


@pytest.mark.parametrize("name", ["gpt-tiny", "bert-tiny", "vit-tiny", "transformer-xl-tiny",
                                  "transformer-tiny", "deepseek-tiny"])
def test_scan_layers_stacks_the_blocks_and_computes_the_same(name):
  model = models.create(name)
  inputs = model.example_inputs()
  params = model.init(jax.random.key(0), *inputs)["params"]
  scanned = models.with_options(model, scan_layers=True)
  stacked = layouts.to_layout(params, jax.eval_shape(
      lambda: scanned.init(jax.random.key(0), *inputs))["params"])
  stacks = {k for k in stacked if "blocks" in k}
  assert stacks == ({"encoder_blocks", "decoder_blocks"} if name == "transformer-tiny"
                    else {"blocks"})
  for stack in stacks:
    assert stacked[stack]["attention"]["out"]["kernel"].shape[0] == model.config.depth
  for want, got in zip(jax.tree.leaves(model.apply({"params": params}, *inputs)),
                       jax.tree.leaves(scanned.apply({"params": stacked}, *inputs))):
    np.testing.assert_allclose(want, got, atol=1e-5)
  jax.tree.map(np.testing.assert_array_equal, layouts.to_layout(stacked, params), params)


def test_scanned_transformer_xl_carries_the_same_memory_and_gradients():
  model = models.create("transformer-xl-tiny", dropout_rate=0.0)
  scanned = models.with_options(model, scan_layers=True)
  tokens = jax.random.randint(jax.random.key(1), (2, 3, 6), 0, model.config.vocab_size)
  params = model.init(jax.random.key(0), tokens[0])["params"]

  def loss(m, p):  # three segments, each attending over the memory the last one left
    memory, total = None, 0.0
    for segment in tokens:
      log_probs, memory = m.apply({"params": p}, segment, memory, mem_len=4)
      total += log_probs.mean()
    return total, memory

  (want, want_memory), want_grads = jax.value_and_grad(loss, 1, has_aux=True)(model, params)
  (got, got_memory), got_grads = jax.value_and_grad(loss, 1, has_aux=True)(
      scanned, layouts.stack(params))
  assert got_memory.shape == (model.config.depth, 3, 4, model.config.width)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(got_memory, want_memory, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               layouts.unstack(got_grads, "block_"), want_grads)


def test_scan_layers_generates_with_a_stacked_kv_cache():
  model = models.create("gpt-tiny", dropout_rate=0.0)
  params = model.init(jax.random.key(0), *model.example_inputs())["params"]
  prompt = jnp.array([[1, 2, 3], [4, 5, 6]])
  greedy = lambda m, p: np.asarray(models.generate(m, p, prompt, max_new_tokens=6,
                                                   rng=jax.random.key(1), temperature=0.0))
  np.testing.assert_array_equal(greedy(model, params),
                                greedy(models.with_options(model, scan_layers=True),
                                       layouts.stack(params)))


def test_stacked_encoder_decoder_beam_searches_with_a_stacked_cache():
  """The decoder's KV cache is [layers, batch * beams, ...]: beams reorder along axis 1."""
  model = models.create("transformer-tiny", decoder_depth=3, dropout_rate=0.0)
  src = jax.random.randint(jax.random.key(3), (2, 7), 3, model.config.vocab_size)
  params = model.init(jax.random.key(0), src, src[:, :4])["params"]
  stacked = layouts.stack(params)
  assert stacked["decoder_blocks"]["mlp"]["fc1"]["kernel"].shape[0] == 3
  search = lambda m, p: models.beam_search(m, p, src, beam_size=3, max_len=6, bos_id=1,
                                           eos_id=2, source_lengths=jnp.array([7, 5]))
  want, got = search(model, params), search(models.with_options(model, scan_layers=True),
                                            stacked)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_allclose(got[1], want[1], atol=1e-5)


def test_batched_prompts_of_different_lengths_generate_as_each_alone():
  """(GPT's learned positions and the cache are covered by the prefill test above.)"""
  from attention_jax.models import generation
  model = models.create("llama-tiny")
  params = init(model, TOKENS)
  prompts = [[5, 9, 3], [7, 1, 4, 4, 2, 8, 6], [11]]
  greedy = lambda p, **kw: np.asarray(models.generate(
      model, params, p, max_new_tokens=8, rng=jax.random.key(0), temperature=0.0, **kw))
  together = greedy(prompts)
  for row, prompt in enumerate(prompts):  # alone, left-padded into the same bucket
    np.testing.assert_array_equal(together[row], greedy([prompt])[0])
  np.testing.assert_array_equal(together[1], greedy(jnp.asarray([prompts[1]]),
                                                    bucket=False)[0])  # no padding at all
  # Prompts of 1 to 16 tokens share one compiled program (one bucket).
  before = generation._generate._cache_size()
  for length in (2, 9, 16):
    greedy([list(range(1, length + 1))] * 2)
  assert generation._generate._cache_size() == before + 1
  # Stop tokens: kept, then padding; streaming yields the same tokens step by step.
  stop = int(together[1, 2])
  first = int(np.argmax(together[1] == stop))  # the row stops at the stop token's first use
  stopped = greedy(prompts, stop_tokens=(stop,), pad_id=0)
  np.testing.assert_array_equal(stopped[1, :first + 1], together[1, :first + 1])
  assert (stopped[1, first + 1:] == 0).all()
  streamed = np.stack(list(models.generate_stream(
      model, params, prompts, max_new_tokens=8, rng=jax.random.key(0), temperature=0.0)), 1)
  np.testing.assert_array_equal(streamed, together)


@pytest.mark.parametrize("kernel", ["flash", "xla"])
def test_a_sliding_window_llama_runs_on_any_kernel_that_takes_windows(kernel):
  model = models.create("llama-tiny", local_window=3)
  params = init(model, TOKENS)
  segments = jnp.broadcast_to((jnp.arange(TOKENS.shape[1]) >= 7) + 1, TOKENS.shape)
  run = lambda m: m.apply({"params": params}, TOKENS, segment_ids=segments)
  np.testing.assert_allclose(run(models.with_options(model, kernel=kernel)), run(model),
                             atol=2e-5)


# performer decodes through the same recurrent-state path as linear (its own prefill + steps
# test is in tests/kernels/test_linear_kernels.py).
DECODING_KERNELS = [("llama-tiny", "linear"), ("llama-tiny", "retention"),
                    ("llama-tiny", "sliding_window:local_window=3,sink_tokens=2"),
                    # learned positions:
                    ("gpt-tiny", "sliding_window:local_window=3,sink_tokens=2")]


@pytest.mark.parametrize("preset,kernel", DECODING_KERNELS)
def test_recurrent_and_windowed_kernels_decode_with_a_bounded_cache(preset, kernel):
  """Prefill + cached steps equal the full pass, and batched left-padded prompts generate as
  each alone (a row's sink tokens are its first real tokens), with a cache whose size does not
  grow with the length (a recurrent state; the sink tokens and the last w + 1 keys)."""
  model = models.create(preset, kernel=kernel)
  params = init(model, TOKENS)
  stepped, cache = prefill_then_steps(model, params, TOKENS)
  np.testing.assert_allclose(stepped, model.apply({"params": params}, TOKENS), atol=5e-5)
  sizes = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(cache)}
  assert all(TOKENS.shape[1] not in shape[1:2] for shape in sizes.values()), sizes
  prompts = [[5, 9, 3], [7, 1, 4, 4, 2, 8, 6]]
  greedy = lambda p: np.asarray(models.generate(model, params, p, max_new_tokens=6,
                                                rng=jax.random.key(0), temperature=0.0))
  together = greedy(prompts)
  for row, prompt in enumerate(prompts):
    np.testing.assert_array_equal(together[row], greedy([prompt])[0])


@pytest.mark.parametrize("preset,options", [
    ("gemma-tiny", dict(kernel="dot_product")), ("gemma-tiny", dict(kernel="flash")),
    ("llama-tiny", dict(local_window=3))])  # Mistral: every layer slides
def test_local_window_layers_decode_with_a_bounded_cache_and_full_layers_with_a_full_one(
    preset, options):
  """A KV-cache kernel in a layer with a local window keeps only the last w + 1 keys
  (Gemma's sliding layers, Mistral), the full layers every key; prefill + cached steps
  equal the full pass, with the input longer than the window."""
  model = models.create(preset, **options)
  window = model.config.local_window
  assert window + 1 < TOKENS.shape[1]
  params = init(model, TOKENS)
  stepped, cache = prefill_then_steps(model, params, TOKENS)
  np.testing.assert_allclose(stepped, model.apply({"params": params}, TOKENS), atol=5e-5)
  types = model.config.layer_types or ("sliding",) * model.config.depth
  for i, layer_type in enumerate(types):
    length = cache[f"block_{i}"]["attention"]["cached_key"].shape[1]
    assert length == (window + 1 if layer_type == "sliding" else TOKENS.shape[1]), (i, length)


def test_layer_types_are_checked_and_scan_layers_says_what_it_cannot_scan():
  with pytest.raises(ValueError, match="layer_types has 3 entries for depth=4"):
    models.create("gemma-tiny", layer_types=("sliding", "full", "full"))
  with pytest.raises(ValueError, match=r"layer_types may hold .*got \['local'\]"):
    models.create("gemma-tiny", layer_types=("local", "full") * 2)
  with pytest.raises(ValueError, match="sliding layers but local_window is None"):
    models.create("gemma-tiny", local_window=None)
  with pytest.raises(ValueError, match="set layer_types to say which layers slide"):
    models.create("llama-tiny", local_rotary_base=100.0)
  assert models.create("gemma-tiny").config.layer_period() == 2
  from attention_jax.layers.transformer import scanned_blocks
  with pytest.raises(ValueError, match="repeat every 2 layers, which does not divide depth=5"):
    scanned_blocks(models.create("gemma-tiny", depth=5,
                                 layer_types=gemma_layer_types(5, 2)).config)


def test_scan_layers_scans_the_repeating_group_of_mixed_layer_types():
  """Gemma's sliding and full layers under scan_layers: a scan over groups of one period
  (blocks/layer_0 the sliding, blocks/layer_1 the full layers), the layers past the last
  whole group unrolled (depth 5: two groups, then one more sliding layer); the same logits,
  generation (each group member with its own cache: bounded for the sliding one), parameter
  layout conversions and sharding axes."""
  from attention_jax.layers import partitioning
  depth = 5
  model = models.create("gemma-tiny", depth=depth, layer_types=gemma_layer_types(depth, 2))
  params = init(model, TOKENS)
  scanned = models.with_options(model, scan_layers=True)
  shapes = jax.eval_shape(lambda: scanned.init(jax.random.key(0), TOKENS))["params"]
  assert set(shapes["blocks"]) == {"layer_0", "layer_1"}
  assert shapes["blocks"]["layer_0"]["attention"]["query"]["kernel"].shape[0] == 2
  assert sorted(k for k in shapes if k.startswith("block_")) == ["block_4"]
  stacked = layouts.to_layout(params, shapes)
  jax.tree.map(np.testing.assert_array_equal, stacked["blocks"]["layer_1"],
               jax.tree.map(lambda *x: jnp.stack(x), params["block_1"], params["block_3"]))
  jax.tree.map(np.testing.assert_array_equal, layouts.to_layout(stacked, params), params)
  np.testing.assert_allclose(scanned.apply({"params": stacked}, TOKENS),
                             model.apply({"params": params}, TOKENS), atol=1e-5)
  prompt = TOKENS[:, :3]  # 3 + 12 tokens: past the window of 7
  greedy = lambda m, p: np.asarray(models.generate(m, p, prompt, max_new_tokens=12,
                                                   rng=jax.random.key(1), temperature=0.0))
  np.testing.assert_array_equal(greedy(scanned, stacked), greedy(model, params))
  cache = init_cache(models.with_options(scanned, decode=True), jnp.zeros((2, 15), jnp.int32))
  assert cache["blocks"]["layer_0"]["attention"]["cached_key"].shape[:3] == (2, 2, 8)  # w + 1
  assert cache["blocks"]["layer_1"]["attention"]["cached_key"].shape[:3] == (2, 2, 15)
  axes = partitioning.logical_axes(shapes)
  assert axes["blocks"]["layer_0"]["mlp"]["fc1"]["kernel"] == partitioning.PartitionSpec(
      "layers", "embed", "mlp")
  groups = scanned.layer_groups()
  assert groups.stack_layers(("blocks", "layer_1", "mlp")).tolist() == [1, 3]
  assert groups.block_index("block_4") == 4 and groups.block_index("block_3") is None


def test_a_kernel_that_cannot_take_a_dense_mask_says_so_when_decoding():
  model = models.with_options(models.create("llama-tiny", kernel="linear"), decode=True)
  params = init(models.create("llama-tiny", kernel="linear"), TOKENS)
  cache = init_cache(model, jnp.zeros_like(TOKENS))
  with pytest.raises(ValueError, match="takes segment ids, not a dense mask"):
    model.apply({"params": params, "cache": cache}, TOKENS[:, :2],
                mask=jnp.ones((2, 1, 2, 12), bool), mutable=["cache"])
