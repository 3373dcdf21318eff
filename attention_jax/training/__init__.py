"""The trainer: `train_and_evaluate(config, workdir)`."""

from attention_jax.training.train import NonFiniteError, train_and_evaluate

__all__ = ["NonFiniteError", "train_and_evaluate"]
