"""`config.init_from`: the pretrained checkpoint a run starts from, the record of its start
kept with every checkpoint, and the checks that a resumed run starts from the same.
(A training workdir as a base is read by `workdir.load_base`.)"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

from attention_jax import pretrained
from attention_jax.training import checkpoint as checkpoint_lib
from attention_jax.training import finetune


def check_same_init_from(init_from: str, saved: dict | None):
  """Refuses to resume checkpoints trained from another `init_from`."""
  if saved and saved.get("init_from") not in (None, init_from):
    raise ValueError(f"config.init_from is {init_from!r} but the checkpoints were trained from "
                     f"{saved['init_from']!r}; restore that value or use a new workdir.")


def pretrained_base(init_from: str, saved: dict | None = None) -> finetune.Base:
  """The base of a pretrained checkpoint (a known name or a Hugging Face directory), with the
  SHA-256 of each of its files; `saved` (a resumed run's "base" record) refuses one whose
  files changed since the run started."""
  if init_from not in pretrained.KNOWN and not os.path.isdir(init_from):
    raise FileNotFoundError(
        f"config.init_from={init_from!r} is not a training workdir (config.json and "
        f"{checkpoint_lib.CHECKPOINT_DIR}/), a known pretrained checkpoint "
        f"({', '.join(sorted(pretrained.KNOWN))}) or a Hugging Face checkpoint directory.")
  directory, _ = pretrained.resolve(init_from)
  # Known names are checked against their pinned hash inside `load`; every file is hashed
  # here to record (and, on resume, compare) what the run started from.
  files = pretrained.hub.file_digests(directory)
  if saved and saved.get("sha256") not in (None, files["weights"]):
    raise ValueError(f"the weights of init_from {init_from!r} changed since this run started "
                     f"(SHA-256 {files['weights']}, the checkpoints were trained on "
                     f"{saved['sha256']}); restore the original files or use a new workdir.")
  recorded = (saved or {}).get("files") or files  # workdirs before file digests: weights only
  changed = sorted(name for name in set(files) | set(recorded)
                   if files.get(name) != recorded.get(name))
  if changed:
    raise ValueError(f"init_from {init_from!r} changed since this run started: "
                     f"{', '.join(changed)} differ from the files the checkpoints were trained "
                     "with (tokenizer, chat template or config); restore them or use a new "
                     "workdir.")
  model, params, tokenizer = pretrained.load(init_from)
  return finetune.Base(init_from, jax.device_get(params), tokenizer,
                       finetune.architecture(model), files["weights"], files=files)


def check_layout(config, saved_base: dict | None, workdir: str, step: int | None):
  """A checkpoint resumes only in the block layout it was written in."""
  saved = bool((saved_base or {}).get("scan_layers", False))
  wanted = bool(config.model.get("scan_layers", False))
  if saved_base is not None and saved != wanted:
    raise checkpoint_lib.ResumeError(
        f"the checkpoint at step {step} in {workdir} holds "
        f"{'stacked' if saved else 'unrolled'} blocks but config.model.scan_layers={wanted}. "
        f"Resume with scan_layers={saved}, or start a new workdir with "
        f"--config.init_from={workdir} (it converts the layout).")


def base_record(config, base, shapes, trained_shapes) -> dict:
  """The "base" record of every checkpoint: what the run starts from and trains (printed);
  a resumed run is checked against it."""
  count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
  total, trained = count(shapes), count(trained_shapes)
  info = {"init_from": config.init_from, "sha256": base.sha256 if base else None,
          "files": base.files if base else None,
          "base": base.reference if base else None,
          "base_step": base.step if base else None, "mode": config.finetune.mode,
          "parameters": total, "trained_parameters": trained,
          "scan_layers": bool(config.model.get("scan_layers", False))}
  print(f"training {trained:,} of {total:,} parameters ({100 * trained / total:.2f}%, "
        f"finetune.mode={config.finetune.mode})", file=sys.stderr)
  return info
