"""Images as sequences of pixels (LRA's "Image" task, which used CIFAR-10 in grey; no package
ships CIFAR here): Fashion-MNIST's 28x28 images as 784 pixel-intensity tokens, 10 classes, no
2-D structure given to the model.

    python -m experiments.train --config=configs/lra_image.py --workdir=runs/lra_image \
        --config.model.kernel=linear

Needs `apt-get install dataset-fashion-mnist`. Variants: (none) sized for a 2-core CPU; "lra"
a larger encoder for accelerators (4 layers of width 128); "tiny" for tests.
"""

import ml_collections

from attention_jax.data import lra
from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.lra_config("fashion_mnist_debian", 785, lra.BYTE_OFFSET + 256)
  c.dataset.tokenizer = "pixels"
  c.batch_size = 16  # ~1,000 tokens a row: sized to about 20 minutes on 2 cores
  c.num_train_steps = 800
  if arg == "lra":
    c.batch_size = 32
    c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 128, 4, 4, 256
    c.num_train_steps = 10000
    c.eval_every_steps = c.checkpoint_every_steps = 1000
  elif arg == "tiny":
    common.make_tiny(c)
    c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 32, 1, 4, 64
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r}; valid: lra, tiny (or none).")
  return c
