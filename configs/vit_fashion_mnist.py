"""ViT image classification on Fashion-MNIST (Debian's dataset-fashion-mnist).

    python -m experiments.train --config=configs/vit_fashion_mnist.py --workdir=runs/vit_fmnist

28x28 grey images in 4x4 patches (49 patches + a class token). Variants: (none) a 6-layer
width-192 ViT, "tiny" for tests.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.task = "classification"
  c.dataset.name = "fashion_mnist_debian"
  c.model.preset = "vit-tiny"  # the family; the fields below set its size
  c.model.image_size = 28
  c.model.channels = 1
  c.model.patch_size = 4
  c.model.width = 192
  c.model.depth = 6
  c.model.num_heads = 3
  c.model.mlp_dim = 768
  c.model.dropout_rate = 0.1
  c.model.kernel = "auto"
  c.batch_size = 128
  c.num_train_steps = 4000
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 300
  c.optimizer.weight_decay = 0.05

  if arg == "tiny":
    common.make_tiny(c)
    c.model.patch_size = 7
    c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 32, 2, 4, 64
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r}; valid: tiny (or none).")
  return c
