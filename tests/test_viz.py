"""attention_jax.viz and experiments.visualize: the model's own weights, drawn."""

import json
import os
import subprocess
import sys

import numpy as np
import jax

from attention_jax import models, viz
from attention_jax.models import layouts
from tests.kernels import reference


def test_attention_weights_are_the_models_own_and_draw(tmp_path):
  model = models.create("gpt-tiny", kernel="flash")  # any kernel: weights come from dot_product
  tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, 128)
  params = model.init(jax.random.key(1), tokens)["params"]
  weights = viz.attention_weights(model, params, tokens)
  assert len(weights) == model.config.depth
  for w in weights:
    assert w.shape == (2, model.config.num_heads, 9, 9)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(w[0, 0], 1) == 0.0)  # causal: nothing above the diagonal
  # Sowing the weights (through dot_product) changes nothing the model computes.
  logits = model.apply({"params": params}, tokens)
  probe = models.with_options(model, sow_weights=True, kernel="dot_product")
  np.testing.assert_allclose(probe.apply({"params": params}, tokens), logits, atol=1e-5)
  path = viz.plot_attention(weights[0][0], [str(t) for t in np.asarray(tokens[0])],
                            str(tmp_path / "layer0.png"), title="layer 0", heads=[0, 1])
  assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_attention_weights_run_encoder_first_and_unstack_scanned_layers():
  model = models.create("transformer-tiny", decoder_depth=3)
  src = jax.random.randint(jax.random.key(0), (2, 7), 3, model.config.vocab_size)
  tgt = src[:, :5]
  params = model.init(jax.random.key(1), src, tgt)["params"]
  weights = viz.attention_weights(model, params, src, tgt)
  # 2 encoder self-attentions (7 x 7), then per decoder block self (5 x 5) and cross (5 x 7).
  assert [w.shape[-2:] for w in weights] == [(7, 7)] * 2 + [(5, 5), (5, 7)] * 3
  scanned = viz.attention_weights(models.with_options(model, scan_layers=True),
                                  layouts.stack(params), src, tgt)
  assert len(scanned) == len(weights)
  for want, got in zip(weights, scanned):
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_kernel_weights_are_the_matrices_each_kernel_applies(tmp_path):
  q, k = (jax.random.normal(key, (2, 12, 2, 8)) for key in jax.random.split(jax.random.key(0)))
  allowed = reference.mask_reference(2, 12, 12, causal=True)
  want = reference.attention_reference(q, k, k, mask=allowed)[1]
  np.testing.assert_allclose(viz.kernel_weights("dot_product", q, k, causal=True), want,
                             atol=1e-5)
  window = reference.mask_reference(2, 12, 12, causal=True, local_window=(3, 0), sink_tokens=1)
  np.testing.assert_allclose(
      viz.kernel_weights("sliding_window:local_window=3,sink_tokens=1", q, k, causal=True),
      reference.attention_reference(q, k, k, mask=window)[1], atol=1e-5)
  elu1 = lambda x: np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0)))  # elu + 1
  scores = np.einsum("bqhd,bkhd->bhqk", elu1(np.asarray(q)), elu1(np.asarray(k))) * allowed
  linear = viz.kernel_weights("linear", q, k, causal=True)
  np.testing.assert_allclose(linear, scores / scores.sum(-1, keepdims=True), rtol=1e-4)
  retention = viz.kernel_weights("retention", q, k, causal=True)
  assert np.all(np.triu(retention[0, 0], 1) == 0.0) and retention.min() < 0  # signed
  path = viz.plot_attention(np.stack([linear[0, 0], retention[0, 0]]), list("abcdefghijkl"),
                            str(tmp_path / "kernels.png"), panel_titles=["linear", "retention"])
  assert os.path.getsize(path) > 0


def test_training_curves_and_the_entry_point(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  records = [{"step": s, "train/loss": 5.0 / s} for s in range(1, 6)]
  records.append({"step": 5, "eval/loss": 1.2, "eval/accuracy": 0.5})
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  assert os.path.getsize(viz.plot_training_curves(str(workdir), str(tmp_path / "c.png"))) > 0
  run = subprocess.run([sys.executable, "-m", "experiments.visualize",
                        "--pretrained=all-MiniLM-L6-v2", "--text=The cat sat.",
                        f"--out_dir={tmp_path / 'pictures'}"], capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  assert sorted(os.listdir(tmp_path / "pictures")) == [f"attention_layer_{i}.png"
                                                       for i in range(6)]


def test_expert_load_over_training(tmp_path):
  """One heatmap per MoE layer from metrics.jsonl's per-layer loads (stacked layers named
  blocks/<i>), layers in depth order; a run without them is told so."""
  import pytest
  workdir = tmp_path / "run"
  workdir.mkdir()
  rng = np.random.default_rng(0)
  records = [{"step": s, "train/loss": 1.0,
              **{f"train/router/expert_load/{layer}": list(rng.dirichlet(np.ones(8)))
                 for layer in ("blocks/0", "blocks/1", "blocks/10")}} for s in range(1, 9)]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  figure = viz.plot_expert_load(str(workdir), str(tmp_path / "load.png"))
  assert os.path.getsize(figure) > 0
  from PIL import Image
  assert Image.open(figure).size[1] > 3 * 100  # three layers stacked
  (workdir / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 1.0}) + "\n")
  with pytest.raises(ValueError, match="no train/router/expert_load/\\* records"):
    viz.plot_expert_load(str(workdir), str(tmp_path / "none.png"))
