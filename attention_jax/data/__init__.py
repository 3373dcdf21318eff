"""Datasets (our TFDS builders over Debian packages), tokenizers and input pipelines."""
