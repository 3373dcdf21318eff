"""experiments.plan: the step compiled for a mesh on fake devices, read from XLA."""

import subprocess
import sys

import pytest

from attention_jax.training import plan
from tests.training.test_parallel import REPO
from tests.training.test_train import tiny_config


def wide_tiny(data_dir, **overrides):
  """The tiny GPT with 8 heads and a width of 128, so tensor=8 divides it."""
  return tiny_config(data_dir, **{"num_devices": 0, "model.width": 128, "model.num_heads": 8,
                                  "model.mlp_dim": 512, **overrides})


@pytest.mark.slow
def test_fsdp_8_and_tensor_8_hold_a_sixth_of_the_parameters_per_device(data_dir):
  one = plan.plan(wide_tiny(data_dir, num_devices=1))
  for layout in ({"mesh.data": 1, "mesh.fsdp": 8}, {"mesh.data": 1, "mesh.tensor": 8}):
    sharded = plan.plan(wide_tiny(data_dir, **layout))
    # The compiled program's arguments: parameters, Adam's two moments, the batch.
    assert sharded["argument_bytes"] <= one["argument_bytes"] / 6, layout
    assert sharded["parameter_bytes"] <= one["parameter_bytes"] / 6, layout
    assert sharded["flops"] < one["flops"]
  assert one["parameter_bytes"] == 4 * one["parameters"]


def test_plan_prints_memory_flops_and_a_prediction(data_dir):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.plan", "--config=configs/gpt_kjv.py:tiny",
       "--devices=4", f"--config.dataset.data_dir={data_dir}", "--config.mesh.data=2",
       "--config.mesh.fsdp=2", "--config.model.remat=full", "--peak_tflops=100",
       "--hbm_gbps=1000"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert ("mesh: data=2 x fsdp=2 x expert=1 x sequence=1 x tensor=1 (4 x cpu); 26,368 "
          "parameters") in out
  for line in ("parameters", "optimizer state", "temporaries", "FLOPs per step",
               "roofline at 100 TFLOP/s and 1000 GB/s per device", "MFU <=",
               "model FLOPs", "per token (6 x the parameters a token uses + attention)"):
    assert line in out


def test_the_expert_axis_divides_the_experts_weights_and_adam_state_per_device(data_dir):
  """A mixture whose experts hold most of the parameters, compiled for 8 devices with
  expert=1, 2, 8 (the rest data parallel): the compiled step's arguments per device
  shrink by exactly the experts' weights and Adam's two moments times (1 - 1/expert); the
  batch per device stays the same. The plan says the parameters a token uses."""
  options = {"model.preset": "mixtral-tiny", "model.num_experts": 8,
             "model.expert_mlp_dim": 64}
  plans = {ep: plan.plan(tiny_config(data_dir, **{"num_devices": 0, "mesh.data": 8 // ep,
                                                  "mesh.expert": ep, **options}))
           for ep in (1, 2, 8)}
  experts = 2 * 8 * 3 * 32 * 64 * 4  # layers x experts x (gate, up, down) x float32
  for ep, planned in plans.items():
    saved = plans[1]["argument_bytes"] - planned["argument_bytes"]
    assert saved == 3 * experts * (1 - 1 / ep), ep  # parameters, Adam's mu and nu
    assert plans[1]["parameter_bytes"] - planned["parameter_bytes"] == experts * (1 - 1 / ep)
  unchosen = 2 * 6 * 3 * 32 * 64  # layers x (8 - 2 chosen) x (gate, up, down)
  assert plans[8]["unchosen_expert_parameters"] == unchosen
  active = plans[8]["parameters"] - unchosen
  assert f"parameters ({active:,} active per token" in plan.describe(plans[8], 100, 1000, 0)


def test_model_flops_count_the_chosen_experts_only(data_dir):
  """A dense model's count is within 10% of XLA's (which also counts the elementwise
  work); a mixture's exceeds its dense twin (one MLP as wide as the chosen experts) by
  exactly its routers, 6 x layers x width x E; under scan_layers XLA's count falls (a
  loop's body counted once) and the roofline uses the model's."""
  dense = plan.plan(tiny_config(data_dir, num_devices=1, **{"model.preset": "llama-tiny",
                                                            "model.mlp_dim": 128}))
  per_step = dense["model_flops_per_token"] * dense["items_per_step"]
  assert 0.9 < per_step / dense["flops"] < 1.1
  mixture = plan.plan(tiny_config(data_dir, num_devices=1, **{
      "model.preset": "mixtral-tiny", "model.num_experts": 8, "model.expert_mlp_dim": 64}))
  routers = 6 * 2 * 32 * 8  # layers x width x experts
  assert (mixture["model_flops_per_token"] - dense["model_flops_per_token"]) == routers
  # The roofline takes the larger count: XLA counts a scanned layer's body once.
  scanned = plan.plan(tiny_config(data_dir, num_devices=1, **{
      "model.preset": "llama-tiny", "model.mlp_dim": 128, "model.scan_layers": True}))
  assert scanned["flops"] < 0.75 * dense["flops"]
  assert plan.step_flops(scanned) == scanned["model_flops_per_token"] * scanned[
      "items_per_step"]
  assert "the model's FLOPs" in plan.describe(scanned, 100, 1000, 0)


def test_a_step_the_compiler_refuses_for_memory_is_a_plan_that_does_not_fit(monkeypatch):
  """The TPU compiler refuses a step over its HBM (XLA:CPU never does): the plan says so
  with the compiler's numbers, as the message libtpu 0.0.42.1 gave for DeepSeek-V3 dropless
  on v5p:8x8x8."""
  import jax
  message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for "
             "HLO temporaries (225.90G) exceeds available HBM (95.74G).")
  def refuse(config, devices=None):
    raise jax.errors.JaxRuntimeError(message)
  monkeypatch.setattr(plan, "setup", refuse)
  monkeypatch.setattr(plan, "topology_devices", lambda name: [])
  with pytest.raises(plan.DoesNotFit, match=r"the step does not fit on v5p:8x8x8: Ran out "
                     r"of memory on HBM, .*\(225.90G\) exceeds available HBM \(95.74G\)\. "
                     "Shard it further"):
    plan.plan(None, "v5p:8x8x8")


def test_bad_meshes_fail_before_compiling_naming_the_axis(data_dir):
  with pytest.raises(ValueError, match="has 6 devices but the run has 8"):
    plan.plan(wide_tiny(data_dir, **{"mesh.data": 3, "mesh.tensor": 2}))
  with pytest.raises(ValueError, match="heads=4 .* mesh axes tensor of size 8 do not"):
    plan.plan(wide_tiny(data_dir, **{"mesh.data": 1, "mesh.tensor": 8,
                                     "model.num_heads": 4}))
