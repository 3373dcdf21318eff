"""Scoring a chat model on held-out instructions (`experiments.eval_instructions`): the loss on
the assistant's tokens, and greedy replies scored by task: chrF for definitions, BLEU and chrF
for translations, accuracy for synonyms (chrF for untagged conversations)."""

from __future__ import annotations

import sys

import jax
import numpy as np

from attention_jax import models
from attention_jax.data import chat as chat_data
from attention_jax.training import bleu, tasks


def synonym_words(text: str) -> set[str]:
  """The words of a comma-separated list, lower-cased."""
  return {w.strip().lower() for w in text.split(",") if w.strip()}


def synonym_accuracy(replies: list[str], references: list[str]) -> dict[str, float]:
  """{"accuracy": share of replies naming at least one of the reference's words,
  "exact": share naming exactly the reference's set}, in percent."""
  hit = [bool(synonym_words(p) & synonym_words(r)) for p, r in zip(replies, references)]
  exact = [synonym_words(p) == synonym_words(r) for p, r in zip(replies, references)]
  return {"accuracy": 100.0 * np.mean(hit), "exact": 100.0 * np.mean(exact)}


def score_replies(task: str, replies: list[str], references: list[str]) -> dict[str, float]:
  """The metrics of one task's replies against their references."""
  if task == "synonyms":
    return synonym_accuracy(replies, references)
  scores = {"chrf": bleu.corpus_chrf(replies, references)}
  if task == "translate":
    scores["bleu"] = bleu.corpus_bleu(replies, references)
  return scores


def assistant_loss(model, params, tokenizer, conversations: list[list[dict]], seq_len: int,
                   batch_size: int, places: list[str] | None = None) -> tuple[float, int]:
  """(mean cross-entropy in nats, number of tokens) of the assistant turns' tokens, with
  conversations packed as the sft task packs them (each attends only to itself); `places`
  ("file:line" of each) name a conversation the chat template refuses."""
  packed = chat_data.pack_conversations(chat_data.encode_each(
      lambda c: chat_data.encode_truncated(tokenizer, c, seq_len + 1), conversations, places),
      seq_len)
  rows = len(packed["tokens"])
  padded = -(-rows // batch_size) * batch_size  # empty rows (segment 0) score nothing
  packed = {k: np.pad(v, ((0, padded - rows), (0, 0))) for k, v in packed.items()}
  sums_of = jax.jit(lambda p, batch: tasks.packed_next_token_sums(
      model, p, batch, jax.random.key(0), True, batch["loss_mask"][:, 1:] > 0)[1])
  loss = count = 0.0
  for start in range(0, padded, batch_size):
    sums = sums_of(params, {k: v[start:start + batch_size] for k, v in packed.items()})
    loss, count = loss + float(sums["loss"]), count + float(sums["count"])
  return loss / max(count, 1.0), int(count)


def generate_replies(model, params, tokenizer, prompts: list[list[dict]], max_new_tokens: int,
                     batch_size: int, log=sys.stderr, places: list[str] | None = None
                     ) -> tuple[list[str], list[bool]]:
  """(replies, ended): greedy replies to each prompt (the messages before the reply), cut
  at the tokenizer's end-of-turn tokens, and whether each ended with one within
  `max_new_tokens` (a model that follows the chat format does). Prompts run in batches of
  similar length."""
  ids = chat_data.encode_each(lambda m: tokenizer.encode_chat(m, add_generation_prompt=True),
                              prompts, places)
  order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
  stops = set(tokenizer.stop_ids)
  replies, ended = [""] * len(ids), [False] * len(ids)
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    rows = [ids[i] for i in chunk]
    rows += [rows[-1]] * (batch_size - len(rows))  # one compiled shape per length bucket
    out = np.asarray(models.generate(
        model, params, rows, max_new_tokens=max_new_tokens, rng=jax.random.key(0),
        temperature=0.0, stop_tokens=tuple(tokenizer.stop_ids), pad_id=tokenizer.pad_id or 0))
    for i, tokens in zip(chunk, out):
      tokens = list(tokens)
      end = next((t for t, token in enumerate(tokens) if token in stops), len(tokens))
      replies[i], ended[i] = tokenizer.decode(tokens[:end]).strip(), end < len(tokens)
    print(f"  replies {min(start + batch_size, len(order))}/{len(order)}", file=log,
          flush=True)
  return replies, ended


def evaluate(model, params, tokenizer, conversations: list[list[dict]], task_names: list[str],
             max_new_tokens: int, batch_size: int, seq_len: int, log=sys.stderr,
             places: list[str] | None = None) -> dict:
  """{"loss", "tokens", and per task {"count", metrics..., "ended", "examples"}} on
  `conversations`, each scored by its task name; a conversation's last message is the
  reference reply. "ended" is the share (%) of replies that ended with an end-of-turn token.
  `places` ("file:line" of each conversation) name one the chat template refuses."""
  loss, count = assistant_loss(model, params, tokenizer, conversations, seq_len, batch_size,
                               places)
  places = places or [None] * len(conversations)
  results = {"loss": loss, "tokens": count, "tasks": {}}
  for task in sorted(set(task_names)):
    chosen = [(c, w) for c, t, w in zip(conversations, task_names, places) if t == task]
    print(f"{task or 'untagged'}: {len(chosen)} prompts", file=log, flush=True)
    replies, ended = generate_replies(model, params, tokenizer, [c[:-1] for c, _ in chosen],
                                      max_new_tokens, batch_size, log, [w for _, w in chosen])
    chosen = [c for c, _ in chosen]
    references = [c[-1]["content"] for c in chosen]
    results["tasks"][task or "untagged"] = {
        "count": len(chosen), **score_replies(task, replies, references),
        "ended": 100.0 * np.mean(ended),
        "examples": [{"prompt": c[-2]["content"], "reference": r, "reply": p}
                     for c, r, p in list(zip(chosen, references, replies))[:3]]}
  return results
