"""Pictures of attention: the weights of every layer and head, and a workdir's training curves.

Needs matplotlib (`pip install attention_jax[viz]`). The weights come from running any model
with `sow_weights=True` and a kernel that returns them (`dot_product`), so they are the
model's own, not a re-computation:

    weights = viz.attention_weights(model, params, tokens)       # per layer [batch, h, q, k]
    viz.plot_attention(weights[0][0], labels, "layer0.png", title="layer 0")
    viz.plot_training_curves(workdir, "curves.png")
"""

from __future__ import annotations

import re

import jax
import numpy as np

from attention_jax import models
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
    if any(getattr(k, "key", None) == "attention_weights" for k in path):
      found.append((jax.tree_util.keystr(path), np.asarray(leaf, np.float32)))

  jax.tree_util.tree_map_with_path(collect, state["intermediates"])
  if not found:
    raise ValueError(f"{type(model).__name__} sowed no attention weights.")
  found.sort(key=lambda item: _layer_order(item[0]))
  return [weights for _, weights in found]


def _layer_order(path: str) -> tuple:
  """Sort key: numbers in the path compared as numbers (block_2 before block_10)."""
  return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path))


def plot_attention(weights, labels: list[str], path: str, *, title: str = "",
                   heads: list[int] | None = None, max_columns: int = 4) -> str:
  """Draws one layer's heads as heatmaps, tokens on both axes; writes `path` (PNG).

  Args:
    weights: [heads, q_len, kv_len] (one example of `attention_weights`).
    labels: the tokens, as text (kv_len of them; the last q_len label the rows).
    heads: which heads (default all).
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
  for ax, head in zip(axes.flat, heads):
    ax.axis("on")
    ax.imshow(weights[head], cmap="viridis", vmin=0.0)
    ax.set_title(f"head {head}", fontsize=9)
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
