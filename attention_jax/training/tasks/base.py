"""What every task shares: the `Task` interface, the loss and summary helpers, and
config.model's merging with a base's architecture."""

from __future__ import annotations

import math

import grain
import jax.numpy as jnp
import optax

from attention_jax.data import pipeline
from attention_jax.layers import moe
from attention_jax.training import finetune


def cross_entropy_sums(logits, labels, mask=None):
  """(mean loss, {"loss", "correct", "count"} sums) of integer labels where `mask` is set."""
  mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels) * mask
  correct = (jnp.argmax(logits, -1) == labels) * mask
  count = mask.sum()
  return losses.sum() / jnp.maximum(count, 1.0), {"loss": losses.sum(),
                                                   "correct": correct.sum(), "count": count}


EXPERT_LOAD = "router/expert_load"  # a tree of per-layer loads among the router metrics


def apply_with_router_losses(model, params, *args, **kwargs):
  """(model.apply's output, the router loss to add, {"router/<name>": scalar}) of `model`
  on `params`: for a mixture of experts the config's router_aux_loss_coef · load-balancing
  loss + router_z_loss_coef · z-loss, and the router metrics training logs (the losses, the
  dropped fraction, the largest expert load, and "router/expert_load": each layer's load by
  module path, what moves DeepSeek's correction biases); (output, 0, {}) for other models."""
  config = model.config
  if getattr(config, "num_experts", None) is None:
    return model.apply({"params": params}, *args, **kwargs), 0.0, {}
  out, state = model.apply({"params": params}, *args, mutable=["intermediates"], **kwargs)
  sown = moe.router_metrics(state["intermediates"])
  loss = (config.router_aux_loss_coef * sown["load_balancing_loss"]
          + config.router_z_loss_coef * sown["router_z_loss"])
  metrics = {f"router/{name}": value for name, value in sown.items() if name != "expert_load"}
  metrics["router/max_expert_load"] = jnp.max(sown["expert_load"])
  metrics[EXPERT_LOAD] = moe.expert_loads(state["intermediates"])
  return out, loss, metrics


def with_router(result, router_loss, router_metrics):
  """(mean loss + router loss, sums with the router metrics) of a (mean loss, sums)."""
  loss, sums = result
  return loss + router_loss, {**sums, **router_metrics}


def weighted(mask, batch):
  """`mask` [b, ...] (float) with each example's evaluation "weight" [b] applied: 0 on the
  copies that fill the last evaluation batch (pipeline.eval_batches); training has none."""
  mask = jnp.asarray(mask, jnp.float32)
  if "weight" not in batch:
    return mask
  return mask * batch["weight"].reshape((-1,) + (1,) * (mask.ndim - 1))


def packed_next_token_sums(model, params, batch, rng, deterministic: bool, scored=None):
  """(mean loss, sums) of next-token prediction on packed rows {"tokens", "segment_ids",
  "positions"} [b, length + 1]: attention stays inside each segment, and a target counts
  where it continues its segment (not padding, not a new document) and `scored` [b, length]
  (if given) allows it."""
  tokens, segments = batch["tokens"], batch["segment_ids"]
  logits, *router = apply_with_router_losses(
      model, params, tokens[:, :-1], positions=batch["positions"][:, :-1],
      segment_ids=segments[:, :-1], deterministic=deterministic, rngs={"dropout": rng})
  mask = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)
  if scored is not None:
    mask &= scored
  return with_router(cross_entropy_sums(logits, tokens[:, 1:], weighted(mask, batch)),
                     *router)


def summarize_classification(sums: dict, prefix: str) -> dict:
  return {f"{prefix}/loss": float(sums["loss"] / sums["count"]),
          f"{prefix}/accuracy": float(sums["correct"] / sums["count"])}


def summarize_tokens(sums: dict, prefix: str) -> dict:
  """Loss, accuracy and perplexity of next-token predictions."""
  out = summarize_classification(sums, prefix)
  out[f"{prefix}/perplexity"] = math.exp(min(out[f"{prefix}/loss"], 50.0))
  return out


def model_options(config, base: finetune.Base | None = None) -> dict:
  """Model fields: the base's architecture (when fine-tuning), then config.model's fields,
  then LoRA adapters if config.finetune.mode is "lora"."""
  options = dict(base.model_fields) if base else {}
  options.update({k: v for k, v in config.model.items() if k != "preset"})
  spec = finetune.lora_spec(config)
  if spec:
    options["lora"] = spec
  return options


class Task:
  """What a config trains: the interface the trainer, experiments.eval and experiments.plan
  call. A task is ready once constructed: a subclass's constructor builds its tokenizer (or
  reloads it from `workdir`, or takes `base`'s, config.init_from's) and opens its data.
  Subclasses implement the methods that raise; the hooks default to nothing."""
  unit = "examples"  # what items_per_example counts, for throughput lines
  decodes = False  # whether decode_metrics has metrics to add (it decodes: slow)

  def __init__(self, config, workdir: str | None = None, base: finetune.Base | None = None):
    del workdir  # a subclass's tokenizer lives there
    self.config = config
    self.base = base
    # What turns text into the model's ids (data.tokenizers.Tokenizer), where the task reads
    # text; reloaded from the workdir on resume (tokenizers.load_or_make).
    self.tokenizer = None

  def datasets(self):
    """(train, eval) grain MapDatasets of examples."""
    raise NotImplementedError

  def model(self, **overrides):
    """The Flax module, config.model's fields with `overrides` on top."""
    raise NotImplementedError

  def init_inputs(self) -> tuple:
    """Example inputs for model.init."""
    raise NotImplementedError

  def items_per_example(self) -> int:
    return 1

  def loss(self, model, params, batch, rng, deterministic: bool):
    """(mean loss, sums) of a batch; the sums add up over batches for `summarize`. Evaluation
    batches of dict examples carry a "weight" [b] (pipeline.eval_batches: 0 on the copies
    that fill the last batch): the sums must leave those out (`weighted`)."""
    raise NotImplementedError

  def summarize(self, sums: dict, prefix: str) -> dict:
    """Metrics {f"{prefix}/name": float} from summed evaluation sums (host numpy)."""
    raise NotImplementedError

  def decode_metrics(self, model, params, prefix: str = "eval") -> dict:
    """Metrics that need decoding (BLEU) when `decodes`; `params` are host arrays."""
    return {}

  def sample(self, model, params, rng) -> str | None:
    """A demonstration output at the end of training. Default: none."""
    return None


def open_sources(config) -> dict:
  """{split: random-access source} of config.dataset's training and evaluation splits."""
  cfg = config.dataset
  return {split: pipeline.data_source(cfg.name, split, cfg.data_dir)
          for split in ("train", cfg.eval_split)}


class ExampleTask(Task):
  """Base of the tasks whose examples are dataset records encoded one by one (`_encode`).
  `sources` (open_sources) when the caller has opened them already."""

  def __init__(self, config, workdir: str | None = None, base: finetune.Base | None = None,
               sources: dict | None = None):
    super().__init__(config, workdir, base)
    self.sources = sources or open_sources(config)

  def _encode(self, example) -> dict:
    raise NotImplementedError

  def datasets(self):
    return tuple(grain.MapDataset.source(self.sources[split]).map(self._encode)
                 for split in ("train", self.config.dataset.eval_split))

  def items_per_example(self) -> int:
    return 1


