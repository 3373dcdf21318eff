"""Instruction fine-tuning: packed conversations equal each conversation alone, the loss
covers assistant tokens only, and a tiny LoRA SFT run from an exported Llama checkpoint trains
exactly its adapters over a bfloat16 frozen base."""

import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attention_jax import models, pretrained
from attention_jax.data import chat as chat_data
from attention_jax.training import chat_eval, finetune, tasks, train_and_evaluate
from attention_jax.training import workdir as workdir_lib
from configs import llama_kjv_web, sft_chat
from experiments import eval_instructions

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
WORDS = {"harp": "a stringed instrument", "lyre": "a small harp", "flute": "a wind instrument",
         "drum": "a percussion instrument", "cedar": "a tall evergreen tree",
         "olive": "a tree bearing small fruit", "river": "a large stream of water",
         "stone": "a piece of rock"}


def _tokenizer():
  from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, trainers
  tokenizer = Tokenizer(tok_models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  corpus = [f"Define the word {w}. {g}" for w, g in WORDS.items()] * 10
  tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=320, special_tokens=["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  return pretrained.ChatTokenizer(tokenizer, {"eos_token": "<|end|>"}, TEMPLATE)


def _conversations(words):
  return [[{"role": "user", "content": f"Define the word {w}."},
           {"role": "assistant", "content": WORDS[w]}] for w in words]


def test_assistant_mask_and_packing_equal_each_conversation_alone():
  tokenizer = _tokenizer()
  encoded = [tokenizer.encode_chat_with_mask(c) for c in _conversations(list(WORDS)[:3])]
  for (ids, mask), conversation in zip(encoded, _conversations(list(WORDS)[:3])):
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)
    assert trained == conversation[1]["content"] + "<|end|>\n"  # the reply and its end
  packed = chat_data.pack_conversations(encoded, seq_len=80)
  assert packed["tokens"].shape == (1, 81)  # all three fit one row
  model = models.create("llama-tiny", vocab_size=320)
  params = model.init(jax.random.key(0), *model.example_inputs())["params"]
  row = {k: jnp.asarray(v) for k, v in packed.items()}
  logits = model.apply({"params": params}, row["tokens"], positions=row["positions"],
                       segment_ids=row["segment_ids"])[0]
  start = 0
  for ids, _ in encoded:
    alone = model.apply({"params": params}, jnp.asarray([ids]))[0]
    np.testing.assert_allclose(logits[start:start + len(ids)], alone, atol=1e-5)
    start += len(ids)
  # The task's loss scores exactly the assistant tokens (after the first one's context).
  config = sft_chat.get_config("tiny")
  task = tasks.create(config, None, finetune.Base("test", params, tokenizer))
  _, sums = task.loss(model, params, row, jax.random.key(0), deterministic=True)
  expected = sum(sum(mask[1:]) for _, mask in encoded)
  assert int(sums["count"]) == expected


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  directory = tmp_path_factory.mktemp("llama")
  model = models.create("llama-tiny", vocab_size=320, max_len=128)
  params = model.init(jax.random.key(0), *model.example_inputs())["params"]
  pretrained.export(model, params, str(directory), _tokenizer())
  words = list(WORDS)
  chat_data.write_conversations(str(directory / "train.jsonl"), _conversations(words[:6]) * 8)
  with open(directory / "eval.jsonl", "w") as f:
    for w in words[6:] * 20:
      f.write(json.dumps({"prompt": f"Define the word {w}.", "response": WORDS[w]}) + "\n")
  return directory


def _config(checkpoint, **overrides):
  config = sft_chat.get_config("tiny")
  config.init_from = str(checkpoint)
  config.dataset.train_file = str(checkpoint / "train.jsonl")
  config.dataset.eval_file = str(checkpoint / "eval.jsonl")
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.mark.slow
def test_lora_sft_trains_its_adapters_over_a_bfloat16_base(tmp_path, checkpoint):
  config = _config(checkpoint)
  results = train_and_evaluate(config, str(tmp_path / "run"))
  assert np.isfinite(results["eval/loss"]) and 0.0 <= results["eval/accuracy"] <= 1.0
  _, task, model, params, step = workdir_lib.load(str(tmp_path / "run"))
  assert step == config.num_train_steps and isinstance(task.tokenizer, pretrained.ChatTokenizer)
  _, base_params, _ = pretrained.load(str(checkpoint))
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  base = {jax.tree_util.keystr(p): v
          for p, v in jax.tree_util.tree_flatten_with_path(base_params)[0]}
  for target in ("query", "key", "value", "out", "gate", "fc1", "fc2"):
    trained_b = [v for k, v in flat.items() if f"'{target}_lora']['b']" in k]
    assert trained_b and all(np.abs(v).max() > 0 for v in trained_b), target  # B left zero
  for key, value in base.items():  # the base is untouched
    np.testing.assert_array_equal(flat[key], value)
  mask = finetune.trainable(params, config, model.layer_groups())
  frozen = finetune.cast_frozen(finetune.split(params, mask)[1], config)
  assert {x.dtype for x in jax.tree.leaves(frozen)} == {jnp.dtype(jnp.bfloat16)}
  # A sft workdir is a base for another sft run, with its chat tokenizer.
  base = workdir_lib.load_base(str(tmp_path / "run"))
  assert isinstance(base.tokenizer, pretrained.ChatTokenizer)


def test_sft_refuses_what_it_cannot_train(tmp_path, checkpoint):
  config = _config(checkpoint)
  config.dataset.train_file = str(tmp_path / "missing.jsonl")
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    train_and_evaluate(config, str(tmp_path / "a"))
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
  with pytest.raises(ValueError, match="bad.jsonl:1: the conversation has no assistant turn"):
    chat_data.read_conversations(str(bad))
  config = _config(checkpoint)
  config.init_from = ""
  with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
    train_and_evaluate(config, str(tmp_path / "b"))


def test_chat_eval_loss_and_replies_equal_each_conversation_alone(checkpoint):
  model, params, tokenizer = workdir_lib.load_decoder(str(checkpoint))
  conversations = _conversations(list(WORDS))
  loss, count = chat_eval.assistant_loss(model, params, tokenizer, conversations, seq_len=64,
                                         batch_size=3)  # packed rows, a padded last batch
  total = scored = 0.0
  encoded = [tokenizer.encode_chat_with_mask(c) for c in conversations]
  width = max(len(ids) for ids, _ in encoded)
  rows = np.zeros((len(encoded), width), np.int32)  # each alone in its row, right-padded
  for row, (ids, _) in enumerate(encoded):
    rows[row, :len(ids)] = ids
  all_logits = jax.jit(lambda x: model.apply({"params": params}, x))(jnp.asarray(rows[:, :-1]))
  for (ids, mask), logits in zip(encoded, all_logits):  # causal: padding is never seen
    losses = optax.softmax_cross_entropy_with_integer_labels(logits[:len(ids) - 1],
                                                             jnp.asarray(ids[1:]))
    keep = np.asarray(mask[1:], bool)
    total, scored = total + float(losses[keep].sum()), scored + keep.sum()
  assert count == scored and loss == pytest.approx(total / scored, rel=1e-5)
  # Batched (sorted by length, the last batch filled) replies equal each prompt alone.
  prompts = [c[:1] for c in conversations[:3]]  # of different lengths, one length bucket
  assert len({len(tokenizer.encode_chat(p, add_generation_prompt=True)) for p in prompts}) > 1
  replies, ended = chat_eval.generate_replies(model, params, tokenizer, prompts,
                                              max_new_tokens=5, batch_size=2, log=io.StringIO())
  for prompt, reply, stopped in zip(prompts, replies, ended):
    ids = tokenizer.encode_chat(prompt, add_generation_prompt=True)
    alone = list(np.asarray(models.generate(
        model, params, [ids], max_new_tokens=5, rng=jax.random.key(0), temperature=0.0,
        stop_tokens=tuple(tokenizer.stop_ids)))[0])
    end = next((i for i, t in enumerate(alone) if t in tokenizer.stop_ids), len(alone))
    assert reply == tokenizer.decode(alone[:end]).strip() and stopped == (end < 5)


def test_reply_scores_by_task():
  assert chat_eval.synonym_accuracy(["Lyre, zither", "drum", ""], ["zither,lyre", "flute", "x"]) \
      == pytest.approx({"accuracy": 100 / 3, "exact": 100 / 3})
  translated = chat_eval.score_replies("translate", ["y la tierra"], ["y la tierra"])
  assert translated == {"chrf": 100.0, "bleu": 0.0}  # BLEU-4 needs four words
  assert set(chat_eval.score_replies("define", ["a harp"], ["a lyre"])) == {"chrf"}


@pytest.mark.slow
def test_pretrain_with_bpe_export_instruction_tune_and_score(tmp_path, data_dir):
  """The end-to-end demonstration of docs/finetuning.md at test size: a Llama pretrained with a byte-level
  BPE exports a ChatML checkpoint that the sft task fine-tunes and eval_instructions scores."""
  config = llama_kjv_web.get_config("tiny")
  config.dataset.name = "kjv_text"  # prepared for the session (KJV + WEB: tests/data)
  config.dataset.data_dir = data_dir
  results = train_and_evaluate(config, str(tmp_path / "pretrain"))
  task = tasks.create(config, str(tmp_path / "pretrain"))  # the saved tokenizer, not a new one
  assert results["eval/bits_per_char"] == pytest.approx(
      results["eval/bits_per_token"] / task.chars_per_token())
  assert 1.2 < task.chars_per_token() < 4.0  # 300 tokens: a few merges of frequent pairs
  config.dataset.tokenizer = "bytes"
  with pytest.raises(ValueError, match="trained with a BPE tokenizer; set config.dataset"):
    tasks.create(config, str(tmp_path / "pretrain"))
  workdir_lib.export(str(tmp_path / "pretrain"), str(tmp_path / "base"))
  model, params, tokenizer = pretrained.load(str(tmp_path / "base"))
  assert isinstance(model, models.Llama) and model.config.tie_embeddings
  assert tokenizer.chat_template == pretrained.chat.CHATML_TEMPLATE
  assert tokenizer.vocab_size == model.config.vocab_size == 300
  assert tokenizer.stop_ids == (0, 2)  # <|endoftext|>, <|im_end|>
  _, _, saved, resumed, _ = workdir_lib.load(str(tmp_path / "pretrain"))
  prompt = jnp.asarray([tokenizer.encode("In the beginning")])
  np.testing.assert_allclose(model.apply({"params": params}, prompt),
                             saved.apply({"params": resumed}, prompt), atol=1e-5)
  data = tmp_path / "instructions.jsonl"
  chat_data.write_conversations(str(data), _conversations(list(WORDS)) * 6,
                                ["define"] * len(WORDS) * 6)
  config.dataset.tokenizer = "bpe"
  with pytest.raises(ValueError, match="has no BPE chat tokenizer"):  # a byte-level base
    tasks.create(config, None, finetune.Base("bytes", {}, None, {}))
  sft = _config(tmp_path / "base")
  sft.dataset.train_file = sft.dataset.eval_file = str(data)
  sft.dataset.seq_len = 32  # the base's max_len
  train_and_evaluate(sft, str(tmp_path / "sft"))
  out = io.StringIO()
  results = eval_instructions.run(str(tmp_path / "sft"), str(data), max_per_task=4,
                                  max_new_tokens=4, batch_size=4, seq_len=32, stream=out,
                                  out=str(tmp_path / "scores.json"))
  assert results["tasks"]["define"]["count"] == 4 and np.isfinite(results["loss"])
  assert 0.0 <= results["tasks"]["define"]["chrf"] <= 100.0
  assert "define (4): chrf" in out.getvalue()
  assert json.loads((tmp_path / "scores.json").read_text())["tokens"] == results["tokens"]


def test_a_base_whose_files_changed_is_refused_on_resume(tmp_path, checkpoint):
  import shutil
  directory = tmp_path / "base"
  shutil.copytree(checkpoint, directory)
  base = workdir_lib.load_base(str(directory))
  assert set(base.files) >= {"config.json", "tokenizer.json", "tokenizer_config.json",
                             "weights"} and base.files["weights"] == base.sha256
  saved = {"init_from": str(directory), "sha256": base.sha256, "files": base.files}
  workdir_lib.load_base(str(directory), saved)  # unchanged: resumes
  config_path = directory / "tokenizer_config.json"
  config = json.loads(config_path.read_text())
  config["chat_template"] = config["chat_template"].replace("<|end|>", "<|end|>\n")
  config_path.write_text(json.dumps(config))
  with pytest.raises(ValueError, match="changed since this run started: tokenizer_config.json "
                                       "differ"):
    workdir_lib.load_base(str(directory), saved)
  (directory / "chat_template.jinja").write_text(TEMPLATE)
  with pytest.raises(ValueError, match="chat_template.jinja, tokenizer_config.json differ"):
    workdir_lib.load_base(str(directory), saved)
