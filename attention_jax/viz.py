"""Pictures of attention: the weights of every layer and head, a workdir's training curves,
and speech (a waveform with its spectrogram; a transcript's cross-attention alignment).

Needs matplotlib (`pip install attention_jax[viz]`). The weights come from running any model
with `sow_weights=True` and a kernel that returns them (`dot_product`), so they are the
model's own, not a re-computation:

    weights = viz.attention_weights(model, params, tokens)       # per layer [batch, h, q, k]
    viz.plot_attention(weights[0][0], labels, "layer0.png", title="layer 0")
    viz.plot_training_curves(workdir, "curves.png")

Kernels that never form the weights (linear, retention, performer) show the weights they imply
through `kernel_weights`.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import kernels, models
from attention_jax.layers.partitioning import in_stack, is_stack
from attention_jax.training import metrics as metrics_lib


def _pyplot():
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError("attention_jax.viz draws with matplotlib: pip install matplotlib "
                      "(or the package's [viz] extra).") from None
  matplotlib.use("Agg")  # files, no display
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def tokens_and_labels(tokenizer, text: str, limit: int) -> tuple[tuple, list[str]]:
  """(the model's inputs for `text`: its ids [1, n], one label per token) with any tokenizer
  (data.tokenizers.Tokenizer): at most `limit` tokens, a special token labelled by its
  vocabulary entry ([CLS])."""
  ids = [int(i) for i in tokenizer.encode(text)][:limit]
  vocabulary = tokenizer.to_hf()
  labels = [tokenizer.decode([i]) or (vocabulary.id_to_token(i) if vocabulary else str(i))
            for i in ids]
  return (np.asarray([ids], np.int32),), labels


def attention_weights(model, params, *inputs, **kwargs) -> list[np.ndarray]:
  """The softmax weights of every attention layer, in the order the layers run.

  Args:
    model: any of our models (its config is copied with sow_weights=True and the
      `dot_product` kernel, which returns weights).
    params: its parameters; *inputs, **kwargs: what `model.apply` takes.

  Returns:
    One array [batch, heads, q_len, kv_len] per attention layer (float32).
  """
  probe = models.with_options(model, sow_weights=True, kernel="dot_product")
  _, state = probe.apply({"params": params}, *inputs, mutable=["intermediates"], **kwargs)
  found = []

  def collect(path, leaf):
    keys = [str(getattr(k, "key", getattr(k, "idx", ""))) for k in path]
    if "attention_weights" not in keys:
      return
    leaf = np.asarray(leaf, np.float32)
    if in_stack(path):  # scan_layers: [layers, ...], each named as its unrolled block
      found.extend(("/".join(f"{k}_{i}" if is_stack(k) else k for k in keys), layer)
                   for i, layer in enumerate(leaf))
    else:
      found.append(("/".join(keys), leaf))

  jax.tree_util.tree_map_with_path(collect, state["intermediates"])
  if not found:
    raise ValueError(f"{type(model).__name__} sowed no attention weights.")
  found.sort(key=lambda item: _layer_order(item[0]))
  return [weights for _, weights in found]


def kernel_weights(kernel, query, key, **kwargs) -> np.ndarray:
  """The weights a kernel gives each value: [batch, heads, q_len, kv_len] (float32).

  Every kernel's output is linear in the values with weights that do not depend on them, so
  running it on one-hot values (value s = e_s) returns its weight matrix, also for the kernels
  that never form it (linear, retention, performer): what the kernel computes, not a
  re-derivation. Retention's weights are signed (its scores are not exponentiated).

  Args:
    kernel: a registry name (options allowed: "sliding_window:local_window=4") or a callable.
    query: [batch, q_len, heads, head_dim]; key: [batch, kv_len, kv_heads, head_dim].
    **kwargs: what the kernel takes (causal=True, kv_lengths=..., ...).
  """
  b, kv_len, kv_heads = key.shape[:3]
  one_hot = jnp.broadcast_to(jnp.eye(kv_len, dtype=query.dtype)[None, :, None, :],
                             (b, kv_len, kv_heads, kv_len))
  out = kernels.get(kernel)(query, key, one_hot, **kwargs)  # [batch, q_len, heads, kv_len]
  return np.asarray(jnp.moveaxis(out, 2, 1), np.float32)


def _layer_order(path: str) -> tuple:
  """Sort key: the encoder's layers before the decoder's, then numbers in the path compared
  as numbers (block_2 before block_10)."""
  return ("decoder" in path,) + tuple(int(p) if p.isdigit() else p
                                      for p in re.split(r"(\d+)", path))


def plot_attention(weights, labels: list[str], path: str, *, title: str = "",
                   heads: list[int] | None = None, max_columns: int = 4,
                   panel_titles: list[str] | None = None) -> str:
  """Draws one layer's heads as heatmaps, tokens on both axes; writes `path` (PNG).

  Args:
    weights: [heads, q_len, kv_len] (one example of `attention_weights`, or any stack of
      maps: `panel_titles` then names them). Signed weights get a colour scale centred on 0.
    labels: the tokens, as text (kv_len of them; the last q_len label the rows).
    heads: which heads (default all).
    panel_titles: one per drawn head (default "head i").
  """
  plt = _pyplot()
  weights = np.asarray(weights)
  heads = list(range(weights.shape[0])) if heads is None else heads
  columns = min(max_columns, len(heads))
  rows = -(-len(heads) // columns)
  size = max(2.5, 0.22 * len(labels))
  figure, axes = plt.subplots(rows, columns, figsize=(size * columns, size * rows),
                              squeeze=False)
  q_labels = labels[len(labels) - weights.shape[1]:]
  for ax in axes.flat:
    ax.axis("off")
  panel_titles = panel_titles or [f"head {head}" for head in heads]
  if len(panel_titles) != len(heads):
    raise ValueError(f"{len(panel_titles)} panel_titles for {len(heads)} heads.")
  for ax, head, panel_title in zip(axes.flat, heads, panel_titles):
    ax.axis("on")
    if weights[head].min() < 0:
      limit = float(np.abs(weights[head]).max())
      ax.imshow(weights[head], cmap="RdBu_r", vmin=-limit, vmax=limit)
    else:
      ax.imshow(weights[head], cmap="viridis", vmin=0.0)
    ax.set_title(panel_title, fontsize=9)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(q_labels)), q_labels, fontsize=7)
  if title:
    figure.suptitle(title)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path


def plot_training_curves(workdir: str, path: str) -> str:
  """Training loss and every evaluation metric of a workdir's metrics.jsonl against the step;
  writes `path` (PNG)."""
  plt = _pyplot()
  records = metrics_lib.read_metrics(workdir)
  series: dict[str, tuple[list, list]] = {}
  for record in records:
    for name, value in record.items():
      if name.startswith(("train/loss", "eval/")) and isinstance(value, (int, float)):
        steps, values = series.setdefault(name, ([], []))
        steps.append(record["step"])
        values.append(value)
  if not series:
    raise ValueError(f"{workdir}/metrics.jsonl has no train/loss or eval/ records yet.")
  names = sorted(series)
  figure, axes = plt.subplots(len(names), 1, figsize=(7, 2.4 * len(names)), squeeze=False)
  for ax, name in zip(axes[:, 0], names):
    steps, values = series[name]
    ax.plot(steps, values, marker="." if len(steps) < 30 else None)
    ax.set_ylabel(name, fontsize=8)
    ax.grid(alpha=0.3)
  axes[-1, 0].set_xlabel("step")
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path


EXPERT_LOAD = "train/router/expert_load/"  # a mixture's per-layer loads in metrics.jsonl


def plot_expert_load(workdir: str, path: str) -> str:
  """A mixture of experts' load over training: one heatmap per MoE layer, the share of the
  step's assignments each expert got (rows) at each logged step (columns), from a workdir's
  metrics.jsonl; an even load is 1/num_experts everywhere. Writes `path` (PNG)."""
  plt = _pyplot()
  loads: dict[str, tuple[list, list]] = {}
  for record in metrics_lib.read_metrics(workdir):
    for name, value in record.items():
      if name.startswith(EXPERT_LOAD) and isinstance(value, list):
        steps, rows = loads.setdefault(name[len(EXPERT_LOAD):], ([], []))
        steps.append(record["step"])
        rows.append(value)
  if not loads:
    raise ValueError(f"{workdir}/metrics.jsonl has no {EXPERT_LOAD}* records: it is not a "
                     "mixture of experts' run, or no step was logged yet.")
  layers = sorted(loads, key=_layer_order)
  figure, axes = plt.subplots(len(layers), 1, figsize=(8, 1.2 + 1.6 * len(layers)),
                              squeeze=False)
  for ax, layer in zip(axes[:, 0], layers):
    steps, rows = loads[layer]
    grid = np.asarray(rows).T  # [experts, logged steps]
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest",
                      vmin=0.0, extent=(steps[0] - 0.5, steps[-1] + 0.5,
                                        grid.shape[0] - 0.5, -0.5))
    ax.set_ylabel(f"{layer}\nexpert", fontsize=8)
    figure.colorbar(image, ax=ax, fraction=0.03, pad=0.01).set_label("share", fontsize=7)
  axes[0, 0].set_title(f"expert load over training (even: {1 / grid.shape[0]:.3f})",
                       fontsize=9)
  axes[-1, 0].set_xlabel("step")
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path


def plot_speech(waveform, features, path: str, *, words=None, title: str = "",
                sample_rate: int = 16000) -> str:
  """A waveform above its log-mel spectrogram ([frames, n_mels], 100 frames a second), on
  one time axis; `words` [(word, start_s, end_s)] marked on both. Writes `path` (PNG)."""
  plt = _pyplot()
  waveform, features = np.asarray(waveform), np.asarray(features)
  seconds = len(waveform) / sample_rate
  figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 4.5), sharex=True,
                                       gridspec_kw={"height_ratios": [1, 2]})
  top.plot(np.arange(len(waveform)) / sample_rate, waveform, linewidth=0.4)
  top.set_ylabel("amplitude")
  bottom.imshow(features[:round(seconds * 100)].T, origin="lower", aspect="auto",
                extent=(0, seconds, 0, features.shape[1]), cmap="magma")
  bottom.set_ylabel("mel bin")
  bottom.set_xlabel("seconds")
  for word, start, _ in words or ():
    for ax in (top, bottom):
      ax.axvline(start, color="white" if ax is bottom else "grey", linewidth=0.6, alpha=0.7)
    top.text(start, top.get_ylim()[1], word, fontsize=7, rotation=45, va="bottom")
  if title:
    figure.suptitle(title)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path


def plot_alignment(features, alignment, labels: list[str], path: str, *,
                   title: str = "") -> str:
  """A transcript's cross-attention alignment (`models.whisper_alignment.align`: rows the
  tokens, columns 20 ms encoder positions) above the spectrogram it was read from, with the
  dynamic-time-warping path drawn on it. `labels`: the rows' tokens as text
  (<|notimestamps|> first). Writes `path` (PNG)."""
  plt = _pyplot()
  matrix = np.asarray(alignment.matrix)
  seconds = matrix.shape[1] / 50
  features = np.asarray(features)[:matrix.shape[1] * 2]
  figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 2 + 0.2 * len(labels)),
                                       sharex=True,
                                       gridspec_kw={"height_ratios": [len(labels), 12]})
  top.imshow(matrix, aspect="auto", cmap="viridis", extent=(0, seconds, len(labels) - 0.5,
                                                              -0.5))
  top.plot((np.asarray(alignment.columns) + 0.5) / 50, alignment.rows, color="red",
           linewidth=1.0)
  top.set_yticks(range(len(labels)), labels, fontsize=7)
  bottom.imshow(features.T, origin="lower", aspect="auto", extent=(0, seconds, 0,
                                                                   features.shape[1]),
                cmap="magma")
  bottom.set_xlabel("seconds")
  bottom.set_ylabel("mel bin")
  if title:
    figure.suptitle(title)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path
