import pytest

from attention_jax.data import pipeline


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """Our KJV builder prepared once per test session (needs the sword-text-kjv package)."""
  path = str(tmp_path_factory.mktemp("tfds"))
  pipeline.data_source("kjv_text", "train", path)
  return path
