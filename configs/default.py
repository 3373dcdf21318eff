"""The quickstart: a small byte-level GPT on the King James Bible, about 8 minutes on 2 CPU cores.

    python -m experiments.train --config=configs/default.py --workdir=/tmp/quickstart
"""

from configs import gpt_kjv


def get_config(arg: str | None = None):
  return gpt_kjv.get_config(arg or "small")
