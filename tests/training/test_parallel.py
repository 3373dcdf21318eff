"""One sharded step for every layout, on 8 fake CPU devices: the same losses as one device,
parameters split as the rule table says, checkpoints that move between layouts, no host
sync between log steps, and one run per workdir."""

import os
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from attention_jax.training import lock as lock_lib
from attention_jax.training import parallel, train_and_evaluate
from attention_jax.training import workdir as workdir_lib
from attention_jax.training.metrics import read_metrics
from configs import translate_kjv_rv, xl_kjv
from tests.training.test_train import tiny_config, train_losses

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = 5


def run_layout(tmp_path, data_dir, name, **overrides):
  """Trains STEPS steps (no final sample, one evaluation batch); returns the losses."""
  overrides = {"num_devices": 0, "num_train_steps": STEPS, "eval_every_steps": STEPS,
               "checkpoint_every_steps": STEPS, "eval_max_batches": 1, **overrides}
  config = tiny_config(data_dir, **overrides)
  if "sample" in config:
    config.sample.max_new_tokens = 0
  train_and_evaluate(config, str(tmp_path / name))
  return np.array(list(train_losses(str(tmp_path / name)).values()))


LAYOUTS = {  # remat and scan_layers ride on some layouts (each was also run alone)
    "data=8": {"mesh.data": 8},
    "fsdp=8, scan_layers": {"mesh.data": 1, "mesh.fsdp": 8, "model.scan_layers": True},
    "tensor=2 x data=4": {"mesh.data": 4, "mesh.tensor": 2},
    "data=2 x fsdp=2 x tensor=2, scan_layers, remat=full": {
        "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "model.scan_layers": True,
        "model.remat": "full"},
    "sequence=4 x data=2 (ring attention)": {"mesh.data": 2, "mesh.sequence": 4},
    "pmap=8": {"parallelism": "pmap"},
    "one device, grad_accum_steps=2, remat=dots": {"num_devices": 1, "grad_accum_steps": 2,
                                                   "model.remat": "dots"},
}


@pytest.fixture(scope="module")
def one_device_losses(tmp_path_factory, data_dir):
  assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
  losses = run_layout(tmp_path_factory.mktemp("one"), data_dir, "one", num_devices=1)
  assert len(losses) == STEPS
  return losses


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_gives_the_losses_of_one_device(tmp_path, data_dir, one_device_losses,
                                                     layout):
  losses = run_layout(tmp_path, data_dir, "run", **LAYOUTS[layout])
  np.testing.assert_allclose(losses, one_device_losses, rtol=1e-5)


@pytest.mark.slow
def test_an_fsdp_checkpoint_resumes_under_data_parallelism(tmp_path, data_dir,
                                                           one_device_losses):
  """Written under fsdp=8 at step 4 (step 5's checkpoint removed), resumed under data=8."""
  run_layout(tmp_path, data_dir, "run", checkpoint_every_steps=2,
             **{"mesh.data": 1, "mesh.fsdp": 8})
  shutil.rmtree(tmp_path / "run" / "checkpoints" / str(STEPS))
  resumed = run_layout(tmp_path, data_dir, "run", **{"mesh.data": 8})
  np.testing.assert_allclose(resumed, one_device_losses, rtol=1e-5)


@pytest.mark.slow
def test_ring_attention_trains_packed_sequences_like_one_device(tmp_path, data_dir):
  packed = {"dataset.pack": True}
  one = run_layout(tmp_path, data_dir, "one", num_devices=1, **packed)
  ring = run_layout(tmp_path, data_dir, "ring", **packed,
                    **{"mesh.data": 2, "mesh.sequence": 4})  # `auto` picks `ring` there
  np.testing.assert_allclose(ring, one, rtol=1e-5)


@pytest.mark.slow
def test_a_llama_trains_on_every_mesh_axis_like_one_device(tmp_path, data_dir):
  """GQA (2 kv heads split over tensor=2), packed documents through ring attention over
  sequence=2, FSDP, stacked blocks and remat, all at once."""
  llama = {"model.preset": "llama-tiny", "model.num_kv_heads": 2, "dataset.pack": True}
  one = run_layout(tmp_path, data_dir, "one", num_devices=1, **llama)
  every_axis = run_layout(tmp_path, data_dir, "all", **llama, **{
      "mesh.data": 1, "mesh.fsdp": 2, "mesh.tensor": 2, "mesh.sequence": 2,
      "model.scan_layers": True, "model.remat": "full"})
  np.testing.assert_allclose(every_axis, one, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("module", [xl_kjv, translate_kjv_rv],
                         ids=lambda m: m.__name__.split(".")[-1])
def test_stacked_blocks_of_the_other_families_train_on_a_3d_mesh_like_one_device(
    module, tmp_path, data_dir):
  """Transformer-XL's segment memory rides through nn.scan beside the stacked parameters
  (its relative-position projections split by heads); the encoder-decoder stacks its encoder
  and its decoder separately."""
  one = run_layout(tmp_path, data_dir, "one", num_devices=1, config_module=module)
  split = run_layout(tmp_path, data_dir, "split", config_module=module, **{
      "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "model.scan_layers": True,
      "model.remat": "full"})
  np.testing.assert_allclose(split, one, rtol=1e-5)


def mesh_config(parallelism="mesh", **sizes):
  config = ml_collections.ConfigDict({"parallelism": parallelism,
                                      "mesh": parallel.default_config()})
  config.mesh.update(sizes)
  return config


def test_mesh_sizes_resolve_and_bad_meshes_name_the_axis():
  assert parallel.axis_sizes(mesh_config(tensor=2), 8) == dict(data=4, fsdp=1, expert=1,
                                                                sequence=1, tensor=2)
  assert parallel.axis_sizes(mesh_config("pmap"), 8)["data"] == 8
  with pytest.raises(ValueError, match="data=2 x fsdp=2 x expert=1 x sequence=1 x tensor=1 "
                     "has 4 "):
    parallel.axis_sizes(mesh_config(data=2, fsdp=2), 8)
  with pytest.raises(ValueError, match="fixed axes multiply to 3"):
    parallel.axis_sizes(mesh_config(tensor=3), 8)
  with pytest.raises(ValueError, match="at most one -1"):
    parallel.axis_sizes(mesh_config(fsdp=-1), 8)
  with pytest.raises(ValueError, match="data parallelism only"):
    parallel.axis_sizes(mesh_config("pmap", tensor=2), 8)
  bad_rule = mesh_config()
  bad_rule.mesh.rules.heads = "model"
  with pytest.raises(ValueError, match=r"rules.heads='model' names unknown mesh axes"):
    parallel.rules(bad_rule)


def test_a_dimension_the_mesh_does_not_divide_names_parameter_and_axis(tmp_path, data_dir):
  config = tiny_config(data_dir, num_devices=0, **{"mesh.data": 1, "mesh.tensor": 8})
  with pytest.raises(ValueError, match=r"params/block_0/attention/key/bias has heads=4 .*"
                                       r"mesh axes tensor of size 8 do not divide"):
    train_and_evaluate(config, str(tmp_path / "bad"))
  with pytest.raises(ValueError, match="batch_size 6 does not split evenly over the batch "
                                       r"axes \(data=4 x fsdp=2\)"):
    train_and_evaluate(tiny_config(data_dir, num_devices=0, batch_size=6,
                                   **{"mesh.fsdp": 2}), str(tmp_path / "bad"))


def test_rules_shard_parameters_megatron_style():
  config = mesh_config(data=1, fsdp=2, tensor=4)
  config.num_devices = 0
  mesh = parallel.make_mesh(config)
  table = parallel.rules(config)
  shapes = {"block_0": {
      "attention": {"query": {"kernel": jax.ShapeDtypeStruct((32, 4, 8), np.float32)},
                    "out": {"kernel": jax.ShapeDtypeStruct((4, 8, 32), np.float32)},
                    "query_lora": {"a": jax.ShapeDtypeStruct((32, 2), np.float32),
                                   "b": jax.ShapeDtypeStruct((2, 4, 8), np.float32)}},
      "mlp": {"fc1": {"kernel": jax.ShapeDtypeStruct((32, 64), np.float32),
                      "bias": jax.ShapeDtypeStruct((64,), np.float32)},
              "fc2": {"kernel": jax.ShapeDtypeStruct((64, 32), np.float32)}}},
      "embed": {"token": {"embedding": jax.ShapeDtypeStruct((256, 32), np.float32)}}}
  specs = jax.tree.map(lambda s: tuple(s.spec), parallel.tree_shardings(shapes, table, mesh))
  block = specs["block_0"]
  assert block["attention"]["query"]["kernel"] == ("fsdp", "tensor", None)  # columns
  assert block["attention"]["out"]["kernel"] == ("tensor", None, "fsdp")  # rows
  assert block["attention"]["query_lora"] == {"a": ("fsdp", None), "b": (None, "tensor", None)}
  assert block["mlp"]["fc1"] == {"kernel": ("fsdp", "tensor"), "bias": ("tensor",)}
  assert block["mlp"]["fc2"]["kernel"] == ("tensor", "fsdp")
  assert specs["embed"]["token"]["embedding"] == ("tensor", "fsdp")  # vocab-parallel


def test_one_run_per_workdir(tmp_path):
  with lock_lib.WorkdirLock(str(tmp_path)):
    code = ("import sys; from attention_jax.training import lock; "
            "lock.WorkdirLock(sys.argv[1]).__enter__()")
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO,
                           capture_output=True, text=True)
    assert other.returncode != 0
    assert "is in use by a running training job (pid " in other.stderr
  # A holder that dies (here: SIGKILL) leaves nothing stuck.
  holder = subprocess.Popen([sys.executable, "-c", code + "; import time; time.sleep(60)",
                             str(tmp_path)], cwd=REPO)
  try:
    for _ in range(200):
      if "pid" in open(os.path.join(tmp_path, lock_lib.LOCK_FILE)).read():
        break
      time.sleep(0.05)
  finally:
    holder.kill()
    holder.wait()
  with lock_lib.WorkdirLock(str(tmp_path)):
    pass


def test_no_host_transfer_between_log_steps(tmp_path, data_dir, monkeypatch):
  fetched = []
  fetch = parallel.Runner.fetch

  def counting_fetch(self, tree):
    fetched.append(len(tree) if isinstance(tree, list) else "eval")
    return fetch(self, tree)

  monkeypatch.setattr(parallel.Runner, "fetch", counting_fetch)
  train_and_evaluate(tiny_config(data_dir, num_train_steps=12, log_every_steps=4,
                                 eval_every_steps=6, checkpoint_every_steps=12),
                     str(tmp_path / "run"))
  # Steps 1-4 fetched at the log step 4, 5-6 before evaluating at 6, 7-8 at 8, 9-12 at 12.
  assert fetched == [4, 2, "eval", 2, 4, "eval"]
  logged = [r["step"] for r in read_metrics(str(tmp_path / "run")) if "train/loss" in r]
  assert logged == [4, 8, 12]


def test_a_checkpoint_resumes_in_its_layout_and_init_from_converts(tmp_path, data_dir):
  unrolled = str(tmp_path / "unrolled")
  train_and_evaluate(tiny_config(data_dir, num_train_steps=2, eval_every_steps=2,
                                 checkpoint_every_steps=2), unrolled)
  with pytest.raises(ValueError, match="holds unrolled blocks but config.model.scan_layers="
                                       "True.*--config.init_from="):
    train_and_evaluate(tiny_config(data_dir, num_train_steps=4, eval_every_steps=2,
                                   checkpoint_every_steps=2, **{"model.scan_layers": True}),
                       unrolled)
  config = tiny_config(data_dir, num_train_steps=1, eval_every_steps=1,
                       checkpoint_every_steps=1, init_from=unrolled,
                       **{"model.scan_layers": True})
  config.optimizer.lr = 0.0  # the stacked run starts from, and keeps, the unrolled weights
  train_and_evaluate(config, str(tmp_path / "stacked"))
  base, tuned = workdir_lib.load(unrolled)[3], workdir_lib.load(str(tmp_path / "stacked"))[3]
  np.testing.assert_array_equal(tuned["blocks"]["mlp"]["fc1"]["kernel"][1],
                                base["block_1"]["mlp"]["fc1"]["kernel"])


MOE = {"model.preset": "mixtral-tiny", "model.num_experts": 8,
       "model.router_aux_loss_coef": 0.01, "model.router_z_loss_coef": 0.001}
EXPERT_LAYOUTS = {
    "expert=4 x data=2": {"mesh.data": 2, "mesh.expert": 4},
    "expert=2 x fsdp=2 x tensor=2, scan_layers, remat=full": {
        "mesh.data": 1, "mesh.expert": 2, "mesh.fsdp": 2, "mesh.tensor": 2,
        "model.scan_layers": True, "model.remat": "full"},
    # capacity counts per device's tokens with explicit collectives: room for every token
    "expert=8, capacity dispatch": {"mesh.data": 1, "mesh.expert": 8,
                                    "model.moe_dispatch": "capacity",
                                    "model.capacity_factor": 4.0},
}
DISPATCH = ("model.moe_dispatch", "model.capacity_factor")


@pytest.fixture(scope="module")
def one_device_moe_losses(tmp_path_factory, data_dir):
  """{dispatch settings: the mixture's losses on one device}, each computed once."""
  computed = {}

  def losses(dispatch: dict):
    key = tuple(sorted(dispatch.items()))
    if key not in computed:
      computed[key] = run_layout(tmp_path_factory.mktemp("one"), data_dir, "one",
                                 num_devices=1, **MOE, **dispatch)
    return computed[key]
  return losses


@pytest.mark.parametrize("layout", list(EXPERT_LAYOUTS))
def test_a_mixture_of_experts_trains_on_an_expert_axis_like_one_device(
    tmp_path, data_dir, layout, one_device_moe_losses):
  """Experts split over the expert axis (with the batch), alone and with data, FSDP and
  tensor axes, stacked blocks and remat: the one-device losses (router losses included)
  within 1e-5 over 5 steps, dropless and with capacity."""
  split = run_layout(tmp_path, data_dir, "split", **MOE, **EXPERT_LAYOUTS[layout])
  dispatch = {k: v for k, v in EXPERT_LAYOUTS[layout].items() if k in DISPATCH}
  np.testing.assert_allclose(split, one_device_moe_losses(dispatch), rtol=1e-5)
