import pytest

from attention_jax.data import pipeline


@pytest.fixture(scope="session")
def data_dir():
  """The run's data directory (tests/conftest.py), with our KJV builder prepared (needs the
  sword-text-kjv package); the xdist workers share it and prepare it once."""
  path = pipeline.default_data_dir()
  pipeline.data_source("kjv_text", "train", path)
  return path
