"""The other configs' tiny variants (classification, translation, Transformer-XL) train end
to end on real data and their workdirs load back."""

import json
import os
import subprocess
import sys
import time

import grain
import jax
import numpy as np
import pytest

from attention_jax.data import pipeline
from attention_jax.training import evaluation, tasks, train_and_evaluate
from attention_jax.training import workdir as workdir_lib
from attention_jax.training.metrics import read_metrics
from configs import bert_wordnet, gpt_kjv, translate_kjv_rv, vit_fashion_mnist, xl_kjv
from experiments import lra as lra_sweep_lib


@pytest.mark.slow
@pytest.mark.parametrize("module", [bert_wordnet, vit_fashion_mnist, translate_kjv_rv, xl_kjv],
                         ids=lambda m: m.__name__.split(".")[-1])
def test_tiny_classification_config_trains(module, tmp_path_factory, tmp_path):
  config = module.get_config("tiny")
  config.dataset.data_dir = str(tmp_path_factory.getbasetemp() / "tfds_classification")
  config.num_devices = 1
  workdir = str(tmp_path / "run")
  results = train_and_evaluate(config, workdir)
  losses = [r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r]
  assert len(losses) == 10 and np.isfinite(losses).all()
  assert 0.0 <= results["eval/accuracy"] <= 1.0
  # The workdir reloads: same tokenizer (WordPiece is saved, not re-trained), same model.
  _, task, model, params, step = workdir_lib.load(workdir)
  assert step == 10 and params
  if module is bert_wordnet:
    assert task.tokenizer.vocab_size <= 500
    assert task.num_classes == 45
  elif module is vit_fashion_mnist:
    assert task.num_classes == 10
  elif module is xl_kjv:
    assert results["eval/bits_per_char"] == pytest.approx(results["eval/loss"] / np.log(2))
  else:
    assert 0.0 <= results["eval/bleu"] <= 100.0
    assert "eval/bleu" in read_metrics(workdir)[-1]
    # experiments.eval runs the trainer's evaluation: BLEU too, under the split's name.
    _, task, model, params, _ = workdir_lib.load(workdir, eval_split="validation")
    _, data = task.datasets()
    metrics = evaluation.evaluate(task, jax.jit(evaluation.make_eval_step(task, model)), params,
                             pipeline.eval_batches(data, 8, 2), model, prefix="validation")
    assert set(metrics) >= {"validation/loss", "validation/bleu"}


def test_a_tfds_catalog_dataset_by_name(tmp_path):
  """Any catalog name works where TFDS can download; offline, its mock data stands in."""
  tfds = pytest.importorskip("tensorflow_datasets")
  config = bert_wordnet.get_config("tiny")
  config.dataset.name = "imdb_reviews"
  config.dataset.eval_split = "test"
  config.num_devices = 1
  with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
    results = train_and_evaluate(config, str(tmp_path / "imdb"))
  assert 0.0 <= results["eval/accuracy"] <= 1.0
  assert len(read_metrics(str(tmp_path / "imdb"))) == 12  # 10 train records + 2 evaluations


@pytest.mark.slow
@pytest.mark.parametrize("task,kernel", [
    ("listops", "linear"), ("text", "sliding_window:local_window=16,sink_tokens=1"),
    ("pathfinder", "performer:num_features=16")])
def test_lra_cells_train_with_linear_cost_kernels(task, kernel, tmp_path_factory, tmp_path):
  """One cell of the LRA sweep each: ListOps ids, KJV bytes and Pathfinder pixels (the
  classification token in front, padding behind) through a BERT whose attention is a
  linear-cost kernel (padding reaches it as key lengths), scored on the test split. (lra_image
  reads Fashion-MNIST's pixels as Pathfinder's.)"""
  data_dir = str(tmp_path_factory.getbasetemp() / "tfds_classification")
  result = lra_sweep_lib.run_cell(str(tmp_path), task, kernel, variant="tiny",
                                  data_dir=data_dir)
  assert 0.0 <= result["test_accuracy"] <= 100.0 and result["step"] == 10
  assert lra_sweep_lib.run_cell(str(tmp_path), task, kernel) == result  # done: not re-run
  assert lra_sweep_lib.saved_result(str(tmp_path), task, "flash") is None
  table = lra_sweep_lib.write_tables(str(tmp_path), [result], [task], [kernel, "flash"])
  assert f"| {kernel} | {result['test_accuracy']:.1f}" in table and "LRA paper" in table
  assert "| flash (softmax) | — |" in table
  assert (tmp_path / "results.md").read_text() == table + "\n"
  if task == "listops":  # the entry point writes the finished cells' table, training none
    run = subprocess.run([sys.executable, "-m", "experiments.lra_sweep", f"--root={tmp_path}",
                          "--tasks=listops", f"--kernels={kernel},flash", "--table_only"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert table in run.stdout and (tmp_path / "results.md").read_text() == table + "\n"
  workdir = os.path.join(str(tmp_path), task, kernel.replace(":", "_").replace(",", "_"))
  with open(os.path.join(workdir, "wall_s.json")) as f:
    assert json.load(f) == result["wall_s"] > 0
  config, task_, model, _, _ = workdir_lib.load(workdir)
  assert task_.num_classes == {"listops": 10, "text": 7, "pathfinder": 2}[task]
  assert model.config.kernel == kernel
  example = task_._encode(task_.sources["train"][0])
  assert example["inputs"][0] == 1 and example["mask"].sum() > 20
  if task == "pathfinder":  # every pixel, 0-255 as ids 2-257
    assert example["mask"].sum() == config.dataset.seq_len
    np.testing.assert_array_equal(example["inputs"][1:], task_.sources["train"][0][
        "image"].reshape(-1).astype(np.int32) + 2)
  if task == "text":  # UTF-8 bytes 0-255 as ids 2-257
    text = pipeline.as_text(task_.sources["train"][0]["text"]).encode("utf-8")
    want = np.frombuffer(text, np.uint8)[:config.dataset.seq_len - 1].astype(np.int32) + 2
    np.testing.assert_array_equal(example["inputs"][1:len(want) + 1], want)
  config.dataset.vocab_size = 10  # smaller than the ids
  small = tasks.create(config)
  with pytest.raises(ValueError, match="dataset.vocab_size is 10: raise it"):
    small._encode(small.sources["train"][0])
  config.dataset.tokenizer = "wordpiece" if task == "pathfinder" else "pixels"
  with pytest.raises(ValueError, match="does not apply to the"):
    tasks.create(config)


def test_an_lra_cell_stopped_by_sigterm_records_no_result(tmp_path, monkeypatch):
  """A SIGTERM'd cell is not finished: no result (the sweep stops; the next run resumes the
  cell from its checkpoint), and its wall time carries over to the session that finishes it."""
  sessions = []
  def preempted(config, workdir):
    sessions.append(workdir)
    time.sleep(0.2)
    return {"preempted_at_step": 3}
  monkeypatch.setattr(lra_sweep_lib, "train_and_evaluate", preempted)
  for _ in range(2):
    assert lra_sweep_lib.run_cell(str(tmp_path), "listops", "linear", variant="tiny") is None
  assert len(sessions) == 2 and lra_sweep_lib.saved_result(str(tmp_path), "listops",
                                                           "linear") is None
  with open(os.path.join(sessions[0], "wall_s.json")) as f:
    assert json.load(f) >= 0.4


def evaluation_split(module, tmp_path_factory, data_dir):
  """(task, model, init params, evaluation split) of a config's tiny variant."""
  config = module.get_config("tiny")
  config.dataset.data_dir = (data_dir if module is gpt_kjv else
                             str(tmp_path_factory.getbasetemp() / "tfds_classification"))
  if module is gpt_kjv:
    config.dataset.pack = True  # rows of documents: dict examples
  task = tasks.create(config)
  task.decodes = False  # BLEU decodes the whole split; the sums are what is checked here
  model = task.model(dropout_rate=0.0)
  params = jax.jit(model.init)(jax.random.key(0), *task.init_inputs())["params"]
  return task, model, params, task.datasets()[1]


@pytest.mark.slow
@pytest.mark.parametrize("module", [bert_wordnet, translate_kjv_rv, gpt_kjv],
                         ids=lambda m: m.__name__.split(".")[-1])
def test_evaluation_counts_every_example_once(module, tmp_path_factory, data_dir):
  """A split that batches do not divide scores as one example at a time: the last batch is
  filled with weight-0 copies that every task's sums leave out."""
  task, model, params, data = evaluation_split(module, tmp_path_factory, data_dir)
  data = data[:11]
  step = jax.jit(evaluation.make_eval_step(task, model))
  by_4 = pipeline.eval_batches(data, 4)
  assert len(by_4) == 3 and by_4[-1]["weight"].tolist() == [1, 1, 1, 0]
  one_by_one = evaluation.evaluate(task, step, params, pipeline.eval_batches(data, 1), model)
  in_fours = evaluation.evaluate(task, step, params, by_4, model)
  assert in_fours == pytest.approx(one_by_one, rel=1e-5)
  dropping_the_rest = evaluation.evaluate(task, step, params, by_4[:2], model)
  assert dropping_the_rest["eval/loss"] != pytest.approx(one_by_one["eval/loss"], rel=1e-5)


def test_evaluation_batches_split_hosts_evenly(monkeypatch):
  """Every host gets the same number of batches (its collectives would hang otherwise) and
  every example is scored once, on one host."""
  data = grain.MapDataset.source([{"x": np.int32(i)} for i in range(11)])
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  seen = []
  for host in (0, 1):
    monkeypatch.setattr(jax, "process_index", lambda host=host: host)
    batches = pipeline.eval_batches(data, 4)  # 2 per host
    assert len(batches) == 3 and all(b["x"].shape == (2,) for b in batches)
    seen += [x for b in batches for x, w in zip(b["x"], b["weight"]) if w == 1]
  assert sorted(seen) == list(range(11))
  assert len(pipeline.eval_batches(data, 4, max_batches=2)) == 2
  with pytest.raises(ValueError, match="batch 3 must be a positive multiple of the 2 hosts"):
    pipeline.eval_batches(data, 3)
  windows = grain.MapDataset.source([np.arange(3) + i for i in range(7)])  # a text stream
  for host in (0, 1):  # 7 windows: one full batch of 4 (host 0's slice holds 4, host 1's 3)
    monkeypatch.setattr(jax, "process_index", lambda host=host: host)
    assert [b.shape for b in pipeline.eval_batches(windows, 4)] == [(2, 3)]
