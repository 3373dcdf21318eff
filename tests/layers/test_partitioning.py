"""Every parameter of every preset (with LoRA adapters on every target) has logical axes."""

import dataclasses

import jax
import pytest
from jax.sharding import PartitionSpec as P

from attention_jax import models
from attention_jax.layers import partitioning
from attention_jax.layers.lora import TARGETS, LoraSpec
from attention_jax.models import presets


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_parameter_has_logical_axes(name):
  config = presets.PRESETS[name].config
  excluded = (() if config.kv_lora_rank is None else ("key", "value")) + (  # MLA: none
      () if config.num_experts is None else ("fc1", "gate", "fc2"))  # experts: per expert
  targets = tuple(t for t in TARGETS if t not in excluded)
  fields = {f.name for f in dataclasses.fields(config)}
  model = models.create(name, **({"lora": LoraSpec(targets=targets)} if "lora" in fields
                                 else {}))
  method = {"method": model.pretrain} if hasattr(model, "pretrain") else {}  # + MLM head
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *model.example_inputs(),
                                             **method))["params"]
  axes = partitioning.logical_axes(shapes)
  for spec, leaf in zip(jax.tree.leaves(axes), jax.tree.leaves(shapes)):
    assert len(spec) == leaf.ndim


def test_unknown_parameters_are_named_and_stacked_layers_gain_an_axis():
  with pytest.raises(ValueError, match="no logical axes for parameter block_0/mystery/w"):
    partitioning.logical_axes({"block_0": {"mystery": {"w": jax.ShapeDtypeStruct((2, 3),
                                                                              "float32")}}})
  stacked = {"blocks": {"mlp": {"fc1": {"kernel": jax.ShapeDtypeStruct((4, 8, 16),
                                                                        "float32")}}}}
  axes = partitioning.logical_axes(stacked)
  assert axes["blocks"]["mlp"]["fc1"]["kernel"] == P("layers", "embed", "mlp")
