"""Renaming and reshaping between Hugging Face tensor names and our Flax parameter trees.

A checkpoint format is a list of `Rule`s: one HF tensor <-> one or more of our parameters,
with the reshapes both ways. The same rules load and export, so the two directions cannot
drift apart.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from typing import Callable

import ml_dtypes
import numpy as np
from flax import traverse_util

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
  """HF tensor `hf_name` <-> our parameters `paths` (several when HF fuses them)."""
  hf_name: str
  paths: tuple[Path, ...]
  to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]]
  to_hf: Callable[..., np.ndarray]


def same(hf_name: str, path: Path) -> Rule:
  """Embeddings, biases and LayerNorm parameters: the same array under another name."""
  return Rule(hf_name, (path,), lambda t: (t,), lambda p: p)


def linear(hf_name: str, path: Path) -> Rule:
  """torch.nn.Linear weight [out, in] <-> Dense kernel [in, out]."""
  return Rule(hf_name, (path,), lambda t: (t.T,), lambda p: p.T)


def linear_to_heads(hf_name: str, path: Path, heads: int, head_dim: int,
                    transposed: bool = True) -> Rule:
  """Linear [out=H*D, in] (or Conv1D [in, H*D] if not `transposed`) <-> [in, H, D]."""
  def to_ours(t):
    t = t.T if transposed else t
    return (t.reshape(t.shape[0], heads, head_dim),)

  def to_hf(p):
    t = p.reshape(p.shape[0], heads * head_dim)
    return t.T if transposed else t
  return Rule(hf_name, (path,), to_ours, to_hf)


def bias_to_heads(hf_name: str, path: Path, heads: int, head_dim: int) -> Rule:
  """bias [H*D] <-> [H, D]."""
  return Rule(hf_name, (path,), lambda t: (t.reshape(heads, head_dim),),
              lambda p: p.reshape(-1))


def heads_to_linear(hf_name: str, path: Path, heads: int, head_dim: int,
                    transposed: bool = True) -> Rule:
  """Output projection: Linear [out, H*D] (or Conv1D [H*D, out]) <-> kernel [H, D, out]."""
  def to_ours(t):
    t = t.T if transposed else t
    return (t.reshape(heads, head_dim, t.shape[-1]),)

  def to_hf(p):
    t = p.reshape(heads * head_dim, p.shape[-1])
    return t.T if transposed else t
  return Rule(hf_name, (path,), to_ours, to_hf)


def fused_to_heads(hf_name: str, paths: tuple[Path, ...], heads: int, head_dim: int) -> Rule:
  """GPT-2's fused Conv1D c_attn [in, 3*H*D] (or its bias [3*H*D]) <-> q, k, v [in, H, D]
  (or [H, D])."""
  def to_ours(t):
    return tuple(part.reshape(part.shape[:-1] + (heads, head_dim))
                 for part in np.split(t, len(paths), axis=-1))

  def to_hf(*parts):
    return np.concatenate([p.reshape(p.shape[:-2] + (heads * head_dim,)) for p in parts], -1)
  return Rule(hf_name, paths, to_ours, to_hf)


def layer_norm(hf: str, path: Path) -> list[Rule]:
  """A LayerNorm's weight and bias <-> our norm's scale and bias."""
  return [same(hf + ".weight", path + ("scale",)), same(hf + ".bias", path + ("bias",))]


def dense(hf: str, path: Path) -> list[Rule]:
  """A torch.nn.Linear with its bias <-> a Dense kernel and bias."""
  return [linear(hf + ".weight", path + ("kernel",)), same(hf + ".bias", path + ("bias",))]


SLICE = "#"  # a path's last key "#<i>": slice i of the parameter at the path before it


def slice_of(rule: Rule, index: int) -> Rule:
  """`rule` for slice `index` (along axis 0) of its parameter(s): one HF tensor per expert
  <-> our experts' stacked weights. The slices are stacked (and checked) when loaded."""
  return dataclasses.replace(rule, paths=tuple(p + (f"{SLICE}{index}",) for p in rule.paths))


@dataclasses.dataclass(frozen=True)
class Choice:
  """Several layouts of the same parameters (lists of rules), the first the one exported;
  a checkpoint is read by the first whose tensors it all has."""
  layouts: tuple[tuple[Rule, ...], ...]


def _chosen(rules, tensors) -> list[Rule]:
  """`rules` with each Choice replaced by its layout present in `tensors` (None: the first,
  the exported one; a checkpoint with none of them is reported against the first)."""
  out = []
  for rule in rules:
    if not isinstance(rule, Choice):
      out.append(rule)
      continue
    present = [layout for layout in rule.layouts
               if tensors is not None and all(r.hf_name in tensors for r in layout)]
    out += (present or rule.layouts)[0]
  return out


def _sliced(path: Path) -> tuple[Path, int] | None:
  """(the parameter's path, slice index) of a `slice_of` path, else None."""
  if path and str(path[-1]).startswith(SLICE):
    return path[:-1], int(path[-1][len(SLICE):])
  return None


def reorder_rows(rule: Rule, order: np.ndarray) -> Rule:
  """`rule` over the HF tensor's rows (axis 0: a Linear's outputs, a bias) taken in `order`
  on load, and put back on export."""
  order = np.asarray(order)
  inverse = np.argsort(order)
  return Rule(rule.hf_name, rule.paths, lambda t: rule.to_ours(t[order]),
              lambda *p: rule.to_hf(*p)[inverse])


def _names(items, limit: int = 12) -> str:
  items = sorted(items)
  shown = ", ".join(items[:limit])
  return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def stack_on_host(path: Path, stacked, index: int, array: np.ndarray, shape: tuple):
  """`tensors_to_params`' default `place_slice`: slices gathered in a host array."""
  del path
  if stacked is None:
    stacked = np.empty(shape, array.dtype)
  stacked[index] = array
  return stacked


def tensors_to_params(tensors: Mapping, rules: list[Rule], expected_shapes: dict,
                      ignore: tuple[str, ...] = (), source: str = "checkpoint",
                      place: Callable[[Path, np.ndarray], object] = lambda path, a: a,
                      place_slice: Callable | None = None) -> dict:
  """Our nested parameter dict from HF `tensors` {name: array}, read one tensor at a time.

  `expected_shapes` {path: shape} (from the model's `eval_shape`) must be covered exactly;
  `ignore` holds glob patterns of HF tensors that are buffers, not parameters. Missing,
  unexpected and mis-shaped tensors raise one ValueError that names them all. `place`
  turns each converted array into the stored value (e.g. a device array) as soon as it is
  read, so the host holds one tensor at a time. A parameter stacked from slices (one HF
  tensor per expert) is built by place_slice(path, stacked or None, index, slice, shape)
  -> stacked, called as each slice is read (e.g. into a sharded device array, so the host
  holds one expert's tensor at a time); by default (`stack_on_host`) it is gathered on the
  host and placed once whole.
  """
  rules = _chosen(rules, tensors)
  missing = [r.hf_name for r in rules if r.hf_name not in tensors]
  used = {r.hf_name for r in rules}
  unexpected = [n for n in tensors
                if n not in used and not any(fnmatch.fnmatch(n, p) for p in ignore)]
  problems = []
  if missing:
    problems.append(f"missing tensors: {_names(missing)}")
  if unexpected:
    problems.append(f"unexpected tensors: {_names(unexpected)}")
  if problems:
    raise ValueError(f"{source} does not match the model its config.json describes; "
                     + "; ".join(problems) + ".")
  flat, wrong, stacked, filled = {}, [], {}, {}
  for rule in rules:
    for path, array in zip(rule.paths, rule.to_ours(np.asarray(tensors[rule.hf_name]))):
      if _sliced(path):
        base, index = _sliced(path)
        shape = tuple(expected_shapes.get(base, ()))
        if not shape or array.shape != shape[1:] or not 0 <= index < shape[0]:
          wrong.append(f"{'/'.join(base)}[{index}] {array.shape} (model: {shape})")
          continue
        stacked[base] = (place_slice or stack_on_host)(base, stacked.get(base), index, array,
                                                       shape)
        filled.setdefault(base, set()).add(index)
        if place_slice is None and len(filled[base]) == shape[0]:
          flat[base] = place(base, stacked.pop(base))  # whole: placed, the host copy freed
        elif len(filled[base]) == shape[0]:
          flat[base] = stacked.pop(base)
        continue
      if path in expected_shapes and array.shape != tuple(expected_shapes[path]):
        wrong.append(f"{'/'.join(path)} {array.shape} (model: "
                     f"{tuple(expected_shapes[path])})")
        continue
      flat[path] = place(path, array)
  uncovered = [p for p in expected_shapes if p not in flat and not any(
      w.startswith(("/".join(p) + " ", "/".join(p) + "[")) for w in wrong)]
  if wrong or uncovered:
    raise ValueError(f"{source}: tensors of the wrong shape: {_names(wrong) or 'none'}; "
                     f"model parameters with no tensor: "
                     f"{_names('/'.join(p) for p in uncovered) or 'none'}.")
  return traverse_util.unflatten_dict(flat)


def params_to_entries(params: dict, rules: list[Rule], dtype=None) -> list[tuple]:
  """(HF name, shape, dtype, make_array) per tensor, for `safetensors_io.write`, which makes
  each one only when it writes it. Every parameter must be covered by a rule (unmerged LoRA
  adapters, for instance, are refused). `dtype` casts floating tensors (None: as stored)."""
  rules = _chosen(rules, None)
  flat = traverse_util.flatten_dict(params)
  value = lambda path: (flat[path] if not _sliced(path)
                        else flat[_sliced(path)[0]][_sliced(path)[1]])
  covered = {(_sliced(p) or (p,))[0] for r in rules for p in r.paths}
  extra = [p for p in flat if p not in covered]
  if extra:
    hint = (" Fold LoRA adapters into the weights first: attention_jax.layers.lora.merge."
            if any(part.endswith("_lora") for p in extra for part in p) else "")
    raise ValueError("these parameters have no place in the Hugging Face format: "
                     f"{_names('/'.join(p) for p in extra)}.{hint}")
  entries = []
  for rule in rules:
    make = lambda rule=rule: rule.to_hf(*(np.asarray(value(p)) for p in rule.paths))
    # A rule with no parameter writes a constant (Whisper's position table) in the
    # parameters' dtype.
    stored = np.dtype((value(rule.paths[0]) if rule.paths else next(iter(flat.values()))).dtype)
    floating = stored in (np.float64, np.float32, np.float16, ml_dtypes.bfloat16)
    out = np.dtype(dtype) if dtype is not None and floating else stored
    entries.append((rule.hf_name, make().shape, out, make))  # the shape: made and dropped
  return entries
