"""Fine-tuning: init_from (a workdir or the pretrained MiniLM), what each mode trains and
freezes, what checkpoints hold, resume, LoRA merging, layer-wise lr decay, errors."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from attention_jax import models, pretrained
from attention_jax.data import pipeline
from attention_jax.layers import lora
from attention_jax.models import layouts
from attention_jax.models.gemma import gemma_layer_types
from attention_jax.training import finetune, optim, train_and_evaluate
from attention_jax.training import workdir as workdir_lib
from attention_jax.training.metrics import read_metrics
from configs import bert_wordnet, finetune_minilm_wordnet


def _data_dir(tmp_path_factory):
  return str(tmp_path_factory.getbasetemp() / "tfds_classification")


@pytest.fixture(scope="module")
def base_workdir(tmp_path_factory):
  """A tiny BERT trained 10 steps on WordNet glosses: the base the fine-tuning runs load."""
  config = bert_wordnet.get_config("tiny")
  config.dataset.data_dir = _data_dir(tmp_path_factory)
  config.num_devices = 1
  workdir = str(tmp_path_factory.mktemp("base"))
  train_and_evaluate(config, workdir)
  return workdir


def finetune_config(tmp_path_factory, base, mode, steps=4, **finetune_fields):
  config = bert_wordnet.get_config("tiny")
  config.dataset.data_dir = _data_dir(tmp_path_factory)
  config.num_devices = 1
  config.init_from = base
  config.finetune.mode = mode
  config.finetune.update(finetune_fields)
  config.num_train_steps = steps
  config.eval_every_steps = config.checkpoint_every_steps = steps
  config.optimizer.lr = 1e-2
  return config


def _flat(params):
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def _saved_state(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step))
  state = ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(path, "state")))
  with open(os.path.join(path, "base", "metadata")) as f:
    base = json.load(f)
  return state, base


@pytest.mark.parametrize("mode,trains", [
    ("linear_probe", lambda p: p.startswith("classifier/")),
    ("top_k_layers", lambda p: p.startswith(("classifier/", "blocks_1/"))),
    ("lora", lambda p: p.startswith("classifier/") or "_lora/" in p),
    ("full", lambda p: True)])
def test_each_mode_trains_exactly_its_parameters(tmp_path_factory, tmp_path, base_workdir,
                                                 mode, trains):
  workdir = str(tmp_path / mode)
  train_and_evaluate(finetune_config(tmp_path_factory, base_workdir, mode, top_k=1), workdir)
  base = _flat(workdir_lib.load(base_workdir)[3])
  tuned = _flat(workdir_lib.load(workdir)[3])
  for path, value in tuned.items():
    if path.startswith("classifier/") or "_lora/" in path:
      continue  # new for this run: not in the base
    if trains(path):
      assert not np.array_equal(value, base[path]), f"{path} did not train"
    else:
      np.testing.assert_array_equal(value, base[path], err_msg=f"{path} is frozen")
  # The checkpoint holds the trained parameters only, and optimizer moments only for them.
  state, info = _saved_state(workdir, 4)
  saved = _flat(state["params"])
  assert set(saved) == {p for p in tuned if trains(p)}
  trained_size = sum(v.size for v in saved.values())
  moments = sum(np.size(x) for x in jax.tree.leaves(state["opt_state"]))
  assert moments <= 2 * trained_size + 16
  assert info["init_from"] == base_workdir and info["mode"] == mode
  assert info["base_step"] == 10  # a resumed run reloads this step of the base, not a later one
  assert info["trained_parameters"] == trained_size
  assert info["parameters"] == sum(v.size for v in tuned.values())


def test_lora_run_resumes_exactly_and_merges(tmp_path_factory, tmp_path, base_workdir):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train_and_evaluate(finetune_config(tmp_path_factory, base_workdir, "lora", steps=6),
                     straight)
  train_and_evaluate(finetune_config(tmp_path_factory, base_workdir, "lora", steps=3), resumed)
  train_and_evaluate(finetune_config(tmp_path_factory, base_workdir, "lora", steps=6), resumed)
  losses = lambda w: {r["step"]: r["train/loss"] for r in read_metrics(w) if "train/loss" in r}
  assert losses(straight) == losses(resumed)
  config, task, model, params, _ = workdir_lib.load(resumed)
  jax.tree.map(np.testing.assert_array_equal, params, workdir_lib.load(straight)[3])
  # Merged adapters give the plain model the adapted model's outputs.
  _, eval_data = task.datasets()
  batch = next(iter(pipeline.eval_batches(eval_data, 8, 1)))
  unmerged = model.apply({"params": params}, batch["inputs"], attention_mask=batch["mask"])
  spec = finetune.lora_spec(config)
  merged = models.with_options(model, lora=None).apply(
      {"params": lora.merge(params, spec)}, batch["inputs"], attention_mask=batch["mask"])
  np.testing.assert_allclose(merged["logits"], unmerged["logits"], atol=1e-5)
  # As a base for another run, the LoRA workdir brings its adapters merged into the weights.
  as_base = workdir_lib.load_base(resumed)
  assert not [p for p in _flat(as_base.params) if "_lora" in p]
  jax.tree.map(np.testing.assert_array_equal, as_base.params, lora.merge(params, spec))
  # Resuming with another base is refused before anything is trained.
  changed = finetune_config(tmp_path_factory, straight, "lora", steps=8)
  with pytest.raises(ValueError, match="checkpoints were trained from"):
    train_and_evaluate(changed, resumed)
  # A workdir whose config.json predates fine-tuning still loads.
  old = tmp_path / "old"
  shutil.copytree(base_workdir, old)
  saved = json.loads((old / "config.json").read_text())
  (old / "config.json").write_text(json.dumps(
      {k: v for k, v in saved.items() if k not in ("finetune", "init_from")}))
  jax.tree.map(np.testing.assert_array_equal, workdir_lib.load(str(old))[3],
               workdir_lib.load(base_workdir)[3])
  # Exported to the Hugging Face format (merged), it loads back with the same outputs.
  exported = workdir_lib.export(resumed, str(tmp_path / "hf"))
  hf_model, hf_params, hf_tokenizer = pretrained.load(exported)
  text = "a person who sings"
  ids, mask = task.tokenizer.encode_padded(text, 12)
  np.testing.assert_array_equal(hf_tokenizer([text])["input_ids"][0], ids[mask > 0])
  np.testing.assert_allclose(hf_model.apply({"params": hf_params}, batch["inputs"],
                                            attention_mask=batch["mask"])["logits"],
                             unmerged["logits"], atol=1e-5)


@pytest.mark.slow
def test_minilm_lora_config_fine_tunes_the_pretrained_weights(tmp_path_factory, tmp_path):
  config = finetune_minilm_wordnet.get_config("lora,tiny")
  config.dataset.data_dir = _data_dir(tmp_path_factory)
  config.num_devices = 1
  workdir = str(tmp_path / "run")
  results = train_and_evaluate(config, workdir)
  assert 0.0 <= results["eval/accuracy"] <= 1.0
  state, info = _saved_state(workdir, 4)
  assert info["sha256"] == pretrained.KNOWN["all-MiniLM-L6-v2"].sha256
  assert info["trained_parameters"] == 6 * 2 * (384 * 8 + 8 * 384) + 384 * 45 + 45
  size = sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(os.path.join(workdir, "checkpoints", "4"))
             for f in files)
  assert size < 3 * 2 ** 20  # adapters + head + their moments; the base is 87 MiB
  _, task, model, params, _ = workdir_lib.load(workdir)
  _, base, tokenizer = pretrained.load("all-MiniLM-L6-v2")
  np.testing.assert_array_equal(params["blocks_3"]["attention"]["query"]["kernel"],
                                base["blocks_3"]["attention"]["query"]["kernel"])
  assert task.tokenizer.vocab_size == 30522
  # The workdir's tokenizer pads and truncates as the checkpoint's own does.
  text = "a curved section or tier of seats in a hall or theater or opera house"
  ids, mask = task.tokenizer.encode_padded(text, 16)
  reference = tokenizer([text], max_length=16)
  np.testing.assert_array_equal(ids[mask > 0], reference["input_ids"][0])


@pytest.mark.parametrize("scan_layers", [False, True])
def test_layer_decay_scales_updates_by_depth_in_both_layouts(scan_layers):
  model = models.create("bert-tiny", num_classes=3, scan_layers=scan_layers)
  params = finetune.initial_params(model, model.example_inputs(), jax.random.key(0), {})
  config = finetune_minilm_wordnet.get_config()
  config.finetune.layer_decay = 0.5
  base = config.optimizer
  base.weight_decay, base.clip_norm, base.warmup_steps = 0.0, 0.0, 0
  plain = optim.make_optimizer(base, 10)
  decayed = optim.make_optimizer(base, 10, finetune.layer_scale(params, config,
                                                                model.layer_groups()))
  grads = jax.tree.map(jnp.ones_like, params)
  step = lambda opt: opt.update(grads, opt.init(params), params)[0]
  ratio = jax.tree.map(lambda a, b: np.asarray(a / b), step(decayed), step(plain))
  block = lambda i: (ratio["blocks"]["mlp"]["fc1"]["kernel"][i] if scan_layers
                     else ratio[f"blocks_{i}"]["mlp"]["fc1"]["kernel"])
  assert ratio["classifier"]["kernel"] == pytest.approx(1.0)
  assert block(1) == pytest.approx(0.5)
  assert block(0) == pytest.approx(0.25)
  assert ratio["embed"]["token"]["embedding"] == pytest.approx(0.125)


def test_layer_decay_puts_the_encoder_below_the_decoder_in_both_layouts():
  """Two stacks: the encoder's layers are the bottom ones, the decoder's the top ones, and
  top_k_layers zeroes the stacked layers it freezes."""
  config = finetune_minilm_wordnet.get_config()
  config.finetune.update(layer_decay=0.5, mode="full")
  scales = {}
  for scan_layers in (False, True):
    model = models.create("transformer-tiny", decoder_depth=3, scan_layers=scan_layers)
    params = finetune.initial_params(model, model.example_inputs(), jax.random.key(0), {})
    scale = finetune.layer_scale(params, config, model.layer_groups())
    scales[scan_layers] = scale.update(jax.tree.map(jnp.ones_like, params), None)[0]
  unrolled, stacked = scales[False], scales[True]
  assert unrolled["encoder_blocks_0"]["mlp"]["fc1"]["kernel"] == pytest.approx(0.5 ** 5)
  assert unrolled["decoder_blocks_2"]["mlp"]["fc1"]["kernel"] == pytest.approx(0.5)
  assert unrolled["embed"]["token"]["embedding"] == pytest.approx(0.5 ** 6)
  jax.tree.map(np.testing.assert_allclose, layouts.stack(unrolled), stacked)
  config.finetune.update(layer_decay=1.0, mode="top_k_layers", top_k=2)
  scale = finetune.layer_scale(stacked, config, models.with_options(
      model, scan_layers=True).layer_groups())
  fc1 = lambda stack: np.asarray(scale.update(jax.tree.map(jnp.ones_like, stacked), None)[0][
      stack]["mlp"]["fc1"]["kernel"][:, 0, 0])
  np.testing.assert_array_equal(fc1("encoder_blocks"), [0, 0])
  np.testing.assert_array_equal(fc1("decoder_blocks"), [0, 1, 1])


def test_layer_decay_and_top_k_follow_each_layer_of_a_grouped_stack():
  """Gemma's sliding/full groups under scan_layers (blocks/layer_<j> with layers j, j + 2,
  and block_4 unrolled above): each layer keeps the scale of its depth."""
  config = finetune_minilm_wordnet.get_config()
  config.finetune.update(layer_decay=0.5, mode="full")
  scales = {}
  for scan_layers in (False, True):
    model = models.create("gemma-tiny", depth=5, layer_types=gemma_layer_types(5, 2),
                          scan_layers=scan_layers)
    params = finetune.initial_params(model, model.example_inputs(), jax.random.key(0), {})
    scale = finetune.layer_scale(params, config, model.layer_groups())
    scales[scan_layers] = scale.update(jax.tree.map(jnp.ones_like, params), None)[0]
  unrolled, stacked = scales[False], scales[True]
  assert set(stacked) >= {"blocks", "block_4"}
  assert unrolled["block_0"]["mlp"]["fc1"]["kernel"] == pytest.approx(0.5 ** 5)
  jax.tree.map(np.testing.assert_allclose, layouts.stack(unrolled, 2), stacked)
  np.testing.assert_allclose(stacked["blocks"]["layer_1"]["mlp"]["fc1"]["kernel"][:, 0, 0],
                             [0.5 ** 4, 0.5 ** 2])
  config.finetune.update(layer_decay=1.0, mode="top_k_layers", top_k=2)
  stacked_params = finetune.initial_params(model, model.example_inputs(), jax.random.key(0), {})
  scale = finetune.layer_scale(stacked_params, config, model.layer_groups())
  updated = scale.update(jax.tree.map(jnp.ones_like, stacked_params), None)[0]
  np.testing.assert_array_equal(updated["blocks"]["layer_1"]["mlp"]["fc1"]["kernel"][:, 0, 0],
                                [0, 1])  # layers 1 and 3: only 3 is in the top 2
  np.testing.assert_array_equal(updated["blocks"]["layer_0"]["mlp"]["fc1"]["kernel"][:, 0, 0],
                                [0, 0])  # layers 0 and 2
  trains = finetune.trainable(stacked_params, config, model.layer_groups())
  assert trains[("block_4", "mlp", "fc1", "kernel")]


def test_top_k_layers_of_stacked_blocks_freezes_the_lower_layers(tmp_path_factory, tmp_path,
                                                                 base_workdir):
  """The base was trained unrolled; the fine-tuning run stacks its blocks (scan_layers)."""
  config = finetune_config(tmp_path_factory, base_workdir, "top_k_layers", top_k=1)
  config.model.scan_layers = True
  train_and_evaluate(config, str(tmp_path / "run"))
  base = workdir_lib.load(base_workdir)[3]
  tuned = workdir_lib.load(str(tmp_path / "run"))[3]
  fc1 = lambda params, i: np.asarray(params["blocks"]["mlp"]["fc1"]["kernel"][i])
  base_fc1 = lambda i: np.asarray(base[f"blocks_{i}"]["mlp"]["fc1"]["kernel"])
  np.testing.assert_array_equal(fc1(tuned, 0), base_fc1(0))  # frozen
  assert not np.array_equal(fc1(tuned, 1), base_fc1(1))  # trained
  np.testing.assert_array_equal(tuned["embed"]["token"]["embedding"],
                                base["embed"]["token"]["embedding"])


def test_bad_fine_tuning_settings_fail_clearly(tmp_path_factory, tmp_path, base_workdir):
  config = finetune_config(tmp_path_factory, base_workdir, "adapters")
  with pytest.raises(ValueError, match="finetune.mode must be one of"):
    train_and_evaluate(config, str(tmp_path / "a"))
  config = finetune_config(tmp_path_factory, str(tmp_path / "nowhere"), "full")
  with pytest.raises(FileNotFoundError, match="is not a training workdir"):
    train_and_evaluate(config, str(tmp_path / "b"))
  config = finetune_config(tmp_path_factory, base_workdir, "full")
  config.model.mlp_dim = 48  # the base's is 64
  with pytest.raises(ValueError, match=r"differ in shape \(blocks_0/mlp/fc1/bias: base "
                     r"\(64,\), model \(48,\)"):
    train_and_evaluate(config, str(tmp_path / "c"))
  config = finetune_config(tmp_path_factory, base_workdir, "lora", lora_targets="query,up_proj")
  with pytest.raises(ValueError, match="LoRA targets must be"):
    train_and_evaluate(config, str(tmp_path / "d"))


def test_linear_probe_of_a_headless_model_is_refused():
  model = models.create("gpt-tiny")
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             *model.example_inputs())["params"])
  config = finetune_minilm_wordnet.get_config("linear_probe")
  with pytest.raises(ValueError, match="trains nothing in this model"):
    finetune.trainable(shapes, config, model.layer_groups())


def test_layer_groups_come_from_the_model_not_from_parameter_names():
  """The encoder-decoder's blocks are encoder_blocks_<i> then decoder_blocks_<i>: top-k
  layers and layer decay follow the order the model declares."""
  model = models.create("transformer-tiny")
  params = finetune.initial_params(model, model.example_inputs(), jax.random.key(0), {})
  config = finetune_minilm_wordnet.get_config()
  config.finetune.mode, config.finetune.top_k, config.finetune.heads = "top_k_layers", 1, ()
  groups = model.layer_groups()
  mask = finetune.trainable(params, config, groups)
  trained = {path[0] for path, trains in mask.items() if trains}
  assert trained == {"decoder_blocks_1"}
  config.finetune.mode, config.finetune.layer_decay = "full", 0.5
  base = config.optimizer
  base.weight_decay, base.clip_norm, base.warmup_steps = 0.0, 0.0, 0
  grads = jax.tree.map(jnp.ones_like, params)
  step = lambda opt: opt.update(grads, opt.init(params), params)[0]
  ratio = jax.tree.map(lambda a, b: np.asarray(a / b), step(optim.make_optimizer(
      base, 10, finetune.layer_scale(params, config, groups))), step(optim.make_optimizer(
          base, 10)))
  kernel = lambda name: ratio[name]["mlp"]["fc1"]["kernel"]
  assert kernel("decoder_blocks_1") == pytest.approx(0.5)
  assert kernel("encoder_blocks_0") == pytest.approx(0.5 ** 4)
  assert ratio["embed"]["token"]["embedding"] == pytest.approx(0.5 ** 5)
  config.finetune.mode, config.finetune.lora_targets = "lora", "query,gate"
  with pytest.raises(ValueError, match=r"LoRA targets \['gate'\] are not projections"):
    finetune.trainable(params, config, groups)
