"""The trainer: `train_and_evaluate(config, workdir)`."""

from attention_jax.training.checkpoint import CheckpointSaveError, ResumeError
from attention_jax.training.train import NonFiniteError, train_and_evaluate

# What stops a run for a reason its user can fix: the entry points print the message alone.
RUN_ERRORS = (CheckpointSaveError, NonFiniteError, ResumeError)

__all__ = ["CheckpointSaveError", "NonFiniteError", "ResumeError", "RUN_ERRORS",
           "train_and_evaluate"]
