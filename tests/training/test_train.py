"""The trainer end to end on real data (KJV), in-process: logs, checkpoints, determinism,
guard rails (the parallel layouts: test_parallel.py)."""

import json
import os

import jax
import numpy as np
import pytest

from attention_jax import models
from attention_jax.training import NonFiniteError, train_and_evaluate
from attention_jax.training import workdir as workdir_lib
from attention_jax.training import metrics as metrics_lib
from attention_jax.training.metrics import read_metrics
from configs import gpt_kjv


def tiny_config(data_dir, config_module=gpt_kjv, **overrides):
  config = config_module.get_config("tiny")
  config.dataset.data_dir = data_dir
  config.num_devices = 1
  for key, value in overrides.items():
    node = config
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return config


def train_losses(workdir):
  return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def test_tiny_config_trains_end_to_end(tmp_path, data_dir, capsys):
  workdir = str(tmp_path / "run")
  results = train_and_evaluate(tiny_config(data_dir), workdir)
  throughput = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("throughput:")]
  assert len(throughput) == 1 and "tokens/s" in throughput[0]
  assert "TFLOP/s per device" in throughput[0] and "MFU" not in throughput[0]  # a CPU
  losses = train_losses(workdir)
  assert sorted(losses) == list(range(1, 21))
  assert losses[20] < losses[1] - 0.5  # it learns
  evals = [r for r in read_metrics(workdir) if "eval/loss" in r]
  assert [r["step"] for r in evals] == [10, 20]
  assert results["eval/bits_per_char"] == pytest.approx(evals[-1]["eval/loss"] / np.log(2))
  assert results["sample"].startswith("And God said, ")
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) >= ["10", "20"]
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  run = json.load(open(os.path.join(workdir, "run.json")))
  assert run["attention_jax"] and run["git_commit"]
  assert json.load(open(os.path.join(workdir, "config.json")))["model"]["kernel"] == "auto"
  assert json.load(open(os.path.join(workdir, "tokenizer.json"))) == {"type": "bytes"}


def test_same_seed_same_losses_different_seed_different(tmp_path, data_dir):
  runs = {}
  for name, seed in (("a", 0), ("b", 0), ("c", 1)):
    train_and_evaluate(tiny_config(data_dir, seed=seed, num_train_steps=6, eval_every_steps=6,
                                   checkpoint_every_steps=6), str(tmp_path / name))
    runs[name] = train_losses(str(tmp_path / name))
  assert runs["a"] == runs["b"]
  assert runs["a"] != runs["c"]


def test_nan_guard_names_the_step_and_keeps_last_good_checkpoint(tmp_path, data_dir):
  workdir = str(tmp_path / "nan")
  train_and_evaluate(tiny_config(data_dir, num_train_steps=4, checkpoint_every_steps=2,
                                 eval_every_steps=2), workdir)
  # Metrics are fetched every 3 steps or before a save: step 5's NaN is seen at step 6,
  # before step 6's checkpoint, and is named as the first bad step.
  config = tiny_config(data_dir, num_train_steps=8, checkpoint_every_steps=2,
                       eval_every_steps=8, log_every_steps=3)
  config.optimizer.lr = float("nan")
  with pytest.raises(NonFiniteError, match="at step 5.*Last good checkpoint: 4"):
    train_and_evaluate(config, workdir)
  assert "6" not in os.listdir(os.path.join(workdir, "checkpoints"))


@pytest.mark.parametrize("overrides,message", [
    (dict(batch_size=6, num_devices=4), "batch_size 6 does not split evenly"),
    (dict(parallelism="spmd"), "parallelism must be one of"),
    (dict(**{"model.kernel": "flsh"}), "unknown attention kernel 'flsh'"),
    (dict(**{"dataset.name": "no_such_dataset"}), "unknown dataset 'no_such_dataset'"),
    (dict(task="rl"), "unknown task 'rl'"),
    (dict(**{"optimizer.schedule": "cosin"}), "schedule must be one of"),
])
def test_config_errors_are_clear(tmp_path, data_dir, overrides, message):
  with pytest.raises(ValueError, match=message):
    train_and_evaluate(tiny_config(data_dir, **overrides), str(tmp_path / "bad"))


def test_a_padded_vocabulary_is_never_sampled(tmp_path, data_dir):
  """config.model.vocab_size above the tokenizer's 256 bytes: the model's table has 384
  rows; with the padded rows' logits made the largest, sampling still draws only real
  bytes; a vocabulary below the tokenizer's is refused."""
  from attention_jax.training.tasks.language_model import LanguageModelTask
  config = tiny_config(data_dir, **{"model.vocab_size": 384})
  config.sample.temperature = 1.0
  os.makedirs(tmp_path / "run")
  task = LanguageModelTask(config, str(tmp_path / "run"))
  model = task.model()
  assert model.config.vocab_size == 384 and model.config.tie_embeddings
  params = model.init(jax.random.key(0), *task.init_inputs())["params"]
  table = params["embed"]["token"]["embedding"]  # tied: real ids' logits 0, padded +-50 x
  direction = jax.random.normal(jax.random.key(2), table.shape[1:])  # (hidden . direction)
  table = table.at[:256].set(0.0).at[256:320].set(50 * direction).at[320:].set(-50 * direction)
  params["embed"]["token"]["embedding"] = table
  prompt = np.zeros((1, 4), np.int32)
  drawn = lambda limit: models.generate(model, params, prompt, max_new_tokens=8,
                                        rng=jax.random.key(1), vocab_limit=limit)
  assert (drawn(None) >= 256).all() and (drawn(256) < 256).all()
  streamed = models.generate_stream(model, params, prompt, max_new_tokens=4,
                                    rng=jax.random.key(1), vocab_limit=256)
  assert all((step < 256).all() for step in streamed)
  text = task.sample(model, params, jax.random.key(1))
  assert text.startswith("And God said, ") and len(text.encode()) > len("And God said, ")
  config.model.vocab_size = 100
  with pytest.raises(ValueError, match="config.model.vocab_size=100 is smaller than the "
                     "tokenizer's 256 ids"):
    LanguageModelTask(config, str(tmp_path / "run")).model()


def test_bfloat16_compute_keeps_float32_parameters(tmp_path, data_dir):
  workdir = str(tmp_path / "bf16")
  train_and_evaluate(tiny_config(data_dir, precision="bfloat16", num_train_steps=4,
                                 eval_every_steps=4, checkpoint_every_steps=4), workdir)
  losses = train_losses(workdir)
  assert np.isfinite(list(losses.values())).all()
  _, _, model, params, _ = workdir_lib.load(workdir)
  assert {str(x.dtype) for x in jax.tree.leaves(params)} == {"float32"}


def test_keeps_latest_and_best_checkpoints(tmp_path, data_dir):
  workdir = str(tmp_path / "keep")
  train_and_evaluate(tiny_config(data_dir, num_train_steps=8, eval_every_steps=2,
                                 checkpoint_every_steps=2, keep_checkpoints=1), workdir)
  evals = {r["step"]: r["eval/loss"] for r in read_metrics(workdir) if "eval/loss" in r}
  best = min(evals, key=evals.get)
  kept = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert kept == sorted({best, 8})
  assert workdir_lib.load(workdir, "best")[4] == best


def test_packed_verses_train(tmp_path, data_dir):
  workdir = str(tmp_path / "packed")
  results = train_and_evaluate(tiny_config(data_dir, **{"dataset.pack": True}), workdir)
  losses = train_losses(workdir)
  assert losses[20] < losses[1] - 0.5
  assert np.isfinite(results["eval/bits_per_char"])


def test_mfu_from_xla_flop_count_and_the_device_peak():
  compiled = jax.jit(lambda a: a @ a).lower(np.ones((64, 64), np.float32)).compile()
  assert metrics_lib.step_flops(compiled) == pytest.approx(2 * 64 ** 3, rel=0.01)

  class H100:
    device_kind = "NVIDIA H100 80GB HBM3"

  line = metrics_lib.throughput_summary(2.0, 4096, "tokens", 247e12, H100())
  assert line == ("throughput: 8,192 tokens/s, 494 TFLOP/s per device (XLA's count of the "
                  "step), MFU 49.9% of the NVIDIA H100 80GB HBM3's 989 TFLOP/s bf16 peak")


def test_a_mixture_of_experts_trains_with_its_router_losses_and_logs_them(tmp_path, data_dir):
  """mixtral-tiny on KJV, two micro-batches a step: train/loss is the cross-entropy plus
  router_aux_loss_coef · load-balancing loss + router_z_loss_coef · z-loss (at step 1, from
  the same initial parameters, it exceeds the run without them by exactly that), and
  metrics.jsonl carries the router metrics, each layer's expert load among them."""
  def run(name, **coefficients):
    config = tiny_config(data_dir, num_train_steps=3, eval_every_steps=3,
                         checkpoint_every_steps=3, eval_max_batches=1, grad_accum_steps=2,
                         **{"model.preset": "mixtral-tiny", "model.moe_dispatch": "capacity",
                            **{f"model.{k}": v for k, v in coefficients.items()}})
    config.sample.max_new_tokens = 0
    train_and_evaluate(config, str(tmp_path / name))
    return [r for r in read_metrics(str(tmp_path / name)) if "train/loss" in r]

  weighted = run("weighted", router_aux_loss_coef=0.5, router_z_loss_coef=0.1)
  plain = run("plain")
  first = weighted[0]
  assert first["step"] == plain[0]["step"] == 1
  assert first["train/router/load_balancing_loss"] >= 1.0 - 1e-5  # 1: an even load
  assert 0.0 <= first["train/router/dropped_fraction"] < 1.0
  assert 0.25 <= first["train/router/max_expert_load"] <= 1.0  # 4 experts
  for layer in ("block_0", "block_1"):  # each layer's load per expert, for viz
    load = first[f"train/router/expert_load/{layer}"]
    assert len(load) == 4 and sum(load) == pytest.approx(1.0)
  assert first["train/router/max_expert_load"] == pytest.approx(max(
      max(first[f"train/router/expert_load/{layer}"]) for layer in ("block_0", "block_1")))
  assert first["train/loss"] - plain[0]["train/loss"] == pytest.approx(
      0.5 * first["train/router/load_balancing_loss"]
      + 0.1 * first["train/router/router_z_loss"], rel=1e-4)


def test_the_step_moves_correction_biases_by_the_load_rule_not_the_optimizer():
  """DeepSeek-V3's balancing outside the optimizer: after each step (two micro-batches),
  every layer's bias is its value before the step plus rate · sign(mean load - load), the
  load measured on the step's batch, even under an optimizer that decays every parameter;
  the other parameters train."""
  import optax
  from attention_jax import models
  from attention_jax.layers import moe
  from attention_jax.training.state import TrainState, make_train_step
  from attention_jax.training.tasks import base

  class NextToken:
    def loss(self, model, params, batch, rng, deterministic):
      logits, *router = base.apply_with_router_losses(model, params, batch[:, :-1])
      return base.with_router(base.cross_entropy_sums(logits, batch[:, 1:]), *router)

  rate = 0.01
  model = models.create("mixtral-tiny", num_experts=8, router_scoring="sigmoid", n_group=4,
                        topk_group=2, router_correction_bias=True,
                        router_bias_update_rate=rate, router_aux_loss_coef=0.01)
  optimizer = optax.adamw(1e-2, weight_decay=0.5, mask=None)  # decays the biases too
  batch = jax.random.randint(jax.random.key(1), (4, 13), 0, model.config.vocab_size)
  params = model.init(jax.random.key(0), batch[:, :-1])["params"]
  state = TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                 opt_state=optimizer.init(params), frozen={})
  step = jax.jit(make_train_step(NextToken(), model, optimizer, grad_accum_steps=2))
  for _ in range(3):
    _, sown = model.apply({"params": state.params}, batch[:, :-1], mutable=["intermediates"])
    loads = moe.expert_loads(sown["intermediates"])
    before = state.params
    state, metrics = step(state, batch, jax.random.key(2))
    assert "train/router/expert_load" not in metrics
    for layer in ("block_0", "block_1"):
      below = np.asarray(loads[f"{layer}/mlp"]).mean() - np.asarray(loads[f"{layer}/mlp"])
      moved = rate * np.where(np.abs(below) > 1e-6, np.sign(below), 0.0)
      np.testing.assert_allclose(state.params[layer]["mlp"][moe.CORRECTION_BIAS],
                                 before[layer]["mlp"][moe.CORRECTION_BIAS] + moved, atol=1e-6)
      assert not np.allclose(state.params[layer]["mlp"]["router"]["kernel"],
                             before[layer]["mlp"]["router"]["kernel"])


def test_the_mixture_config_and_its_dense_baselines_train(tmp_path, data_dir):
  """configs/moe_kjv.py:tiny trains, logging its router metrics; the dense baselines' models
  have the mixture's parameters per token (dense_active) and in all (dense_total), but for
  the routers."""
  from attention_jax import models
  from configs import moe_kjv
  config = tiny_config(data_dir, moe_kjv)
  config.sample.max_new_tokens = 0
  train_and_evaluate(config, str(tmp_path / "moe"))
  records = [r for r in read_metrics(str(tmp_path / "moe")) if "train/loss" in r]
  assert len(records) == config.num_train_steps
  assert "train/router/expert_load/block_1" in records[-1]
  sizes = {}
  for variant in (None, "dense_active", "dense_total"):
    model = dict(moe_kjv.get_config(variant).model)
    preset = model.pop("preset")
    sizes[variant] = (models.param_count(preset, **model),
                      models.active_param_count(preset, **model))
  routers = 4 * 256 * 8  # depth x width x experts: all a dense model lacks
  assert sizes["dense_active"][0] == sizes[None][1] - routers  # parameters per token
  assert sizes["dense_total"][0] == sizes[None][0] - routers  # parameters in all
