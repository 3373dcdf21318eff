"""Tasks: what a config trains. `create(config, workdir, base)` returns the task `config.task`
names, ready (tokenizer built, data sources open). Each task is one module here; adding one is
that module plus its line in `TASKS`."""

from __future__ import annotations

from attention_jax.training import finetune
from attention_jax.training.tasks import classification
from attention_jax.training.tasks.classification import (ClassificationTask,
                                                         ImageClassificationTask,
                                                         TextClassificationTask,
                                                         TokenClassificationTask)
from attention_jax.training.tasks.asr import AsrTask
from attention_jax.training.tasks.base import (Task, cross_entropy_sums, packed_next_token_sums,
                                               weighted)
from attention_jax.training.tasks.language_model import LanguageModelTask, TransformerXLTask
from attention_jax.training.tasks.sft import SftTask
from attention_jax.training.tasks.translation import TranslationTask

# config.task -> a callable (config, workdir, base) -> Task.
TASKS = {
    "lm": LanguageModelTask,
    "xl_lm": TransformerXLTask,
    "classification": classification.create,  # text, token or image: by the dataset's features
    "translation": TranslationTask,
    "sft": SftTask,
    "asr": AsrTask,
}


def create(config, workdir: str | None = None, base: finetune.Base | None = None) -> Task:
  """The task `config.task` names, ready to use: its tokenizer built (or reloaded from
  `workdir`, or taken from `base`, config.init_from's) and its data sources open."""
  if config.task not in TASKS:
    raise ValueError(f"unknown task {config.task!r}; valid tasks: {', '.join(sorted(TASKS))}.")
  return TASKS[config.task](config, workdir, base)


__all__ = ["TASKS", "AsrTask", "ClassificationTask", "ImageClassificationTask", "LanguageModelTask",
           "SftTask", "Task", "TextClassificationTask", "TokenClassificationTask",
           "TransformerXLTask", "TranslationTask", "create", "cross_entropy_sums",
           "packed_next_token_sums", "weighted"]
