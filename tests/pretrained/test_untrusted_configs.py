"""Checkpoint files written by someone else: every config.json, generation_config.json,
tokenizer_config.json and sentence_bert_config.json value read is typed, and a wrong one is a
ValueError naming the file, field, value and expected type; chat templates are bounded in
output and time, and every failure of one is a ChatTemplateError naming its file."""

import json
import os
import shutil
import threading

import jax
import pytest

from attention_jax import models, pretrained
from attention_jax.pretrained import chat, formats, json_file
from attention_jax.pretrained.json_file import JsonObject

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
MESSAGES = [{"role": "user", "content": "Define the word harp."},
            {"role": "assistant", "content": "A stringed instrument."}]


def _tokenizer(template=TEMPLATE):
  from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, trainers
  tokenizer = Tokenizer(tok_models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.train_from_iterator(["Define the word harp. A stringed instrument."] * 10,
                                trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<|user|>", "<|assistant|>", "<|end|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  return pretrained.ChatTokenizer(tokenizer, {"eos_token": "<|end|>"}, template)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  directory = tmp_path_factory.mktemp("llama")
  model = models.create("llama-tiny", vocab_size=320, max_len=64)
  params = model.init(jax.random.key(0), *model.example_inputs())["params"]
  pretrained.export(model, params, str(directory), _tokenizer())
  return directory


def _copy(checkpoint, tmp_path, file=None, change=None):
  """A copy of the checkpoint with `change` applied to the JSON object in `file`."""
  directory = tmp_path / "copy"
  shutil.copytree(checkpoint, directory)
  if file:
    path = directory / file
    values = json.loads(path.read_text()) if path.exists() else {}
    change(values)
    path.write_text(json.dumps(values))
  return directory


def _set(**fields):
  return lambda values: values.update(fields)


def _drop(name):
  return lambda values: values.pop(name)


@pytest.mark.parametrize("file, change, message", [
    ("config.json", _set(tie_word_embeddings="false"),
     "field 'tie_word_embeddings' is 'false' (a string), expected true or false"),
    ("config.json", _set(num_hidden_layers="2"),
     "field 'num_hidden_layers' is '2' (a string), expected an integer >= 1"),
    ("config.json", _set(num_attention_heads=0),
     "field 'num_attention_heads' is 0 (an integer), expected an integer >= 1"),
    ("config.json", _set(hidden_size=True),
     "field 'hidden_size' is True (a boolean), expected an integer >= 1"),
    ("config.json", _drop("vocab_size"), "lacks the field 'vocab_size' (an integer >= 1)"),
    ("config.json", _set(rms_norm_eps=-1e-6), "field 'rms_norm_eps' is -1e-06"),
    ("config.json", _set(rope_scaling={"rope_type": "linear", "factor": "8"}, rope_parameters=None),
     "rope_scaling: field 'factor' is '8' (a string), expected a positive number"),
    ("config.json", _set(rope_parameters=[1]),
     "field 'rope_parameters' is [1] (a list), expected an object"),
    ("config.json", _set(model_type=["llama"]), "field 'model_type' is ['llama'] (a list)"),
    ("generation_config.json", _set(eos_token_id="2"),
     "field 'eos_token_id' is '2' (a string), expected a token id >= 0 or a list of them"),
    ("generation_config.json", _set(eos_token_id=[2, -1]), "field 'eos_token_id' is [2, -1]"),
    ("tokenizer_config.json", _set(eos_token=5),
     "field 'eos_token' is 5 (an integer), expected a string or {\"content\": a string}"),
    ("tokenizer_config.json", _set(chat_template=7), "chat_template is int, expected a string"),
])
def test_wrong_values_name_the_file_field_value_and_type(checkpoint, tmp_path, file, change,
                                                         message):
  directory = _copy(checkpoint, tmp_path, file, change)
  with pytest.raises(ValueError) as error:
    pretrained.load(str(directory))
  assert str(directory / file) in str(error.value) and message in str(error.value)


@pytest.mark.parametrize("text, message", [
    ('{"vocab_size": 320,', "is not valid JSON: Expecting property name"),
    ("[1, 2]", "holds a list, but a configuration file holds a JSON object"),
    ("null", "holds null"),
    ("\xff\xfe{}", "is not valid JSON"),
])
def test_a_config_that_is_not_a_json_object_is_refused(checkpoint, tmp_path, text, message):
  directory = _copy(checkpoint, tmp_path)
  (directory / "config.json").write_text(text)
  with pytest.raises(ValueError, match=f"{directory / 'config.json'} .*{message}"):
    pretrained.load(str(directory))


def test_non_utf8_and_oversized_files_are_refused(checkpoint, tmp_path):
  directory = _copy(checkpoint, tmp_path)
  (directory / "config.json").write_bytes(b'{"model_type": "\xff"}')
  with pytest.raises(ValueError, match="config.json is not UTF-8 text"):
    pretrained.load(str(directory))
  (directory / "config.json").write_bytes(b" " * (json_file.MAX_BYTES + 1))
  with pytest.raises(ValueError, match="config.json is over 16 MiB"):
    pretrained.load(str(directory))


def _finishes(function, seconds=30.0):
  """function()'s exception, failing the test if it has not returned within `seconds`."""
  result = {}

  def run():
    try:
      function()
    except Exception as e:  # noqa: BLE001 (handed to the test)
      result["error"] = e
  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(seconds)
  assert not thread.is_alive(), "the loader hangs"
  return result.get("error")


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json", "tokenizer.json",
                                  "generation_config.json", "chat_template.jinja"])
def test_a_fifo_in_place_of_a_file_is_refused_unopened(checkpoint, tmp_path, name):
  directory = _copy(checkpoint, tmp_path)
  if (directory / name).exists():
    os.remove(directory / name)
  os.mkfifo(directory / name)
  error = _finishes(lambda: pretrained.load(str(directory)))
  assert isinstance(error, ValueError) and f"{directory / name} is a FIFO" in str(error)


def test_the_typed_fields_of_bert_gpt2_and_sentence_transformers():
  bert = {"vocab_size": 30, "max_position_embeddings": 16, "hidden_size": 8,
          "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16}
  assert formats.BertFormat.fields(JsonObject(bert, "c.json"), {})["depth"] == 1
  with pytest.raises(ValueError, match="c.json: field 'hidden_dropout_prob' is 1.5 .*<= 1.0"):
    formats.BertFormat.fields(JsonObject({**bert, "hidden_dropout_prob": 1.5}, "c.json"), {})
  with pytest.raises(ValueError, match="c.json: activation hidden_act='tanh' is not supported"):
    formats.BertFormat.fields(JsonObject({**bert, "hidden_act": "tanh"}, "c.json"), {})
  gpt2 = {"vocab_size": 30, "n_positions": 16, "n_embd": 8, "n_layer": 1, "n_head": 2,
          "n_inner": None}
  assert formats.Gpt2Format.fields(JsonObject(gpt2, "g.json"), {})["mlp_dim"] == 32
  with pytest.raises(ValueError, match="g.json: field 'n_layer' is 2.0 \\(a number\\), "
                                       "expected an integer >= 1"):
    formats.Gpt2Format.fields(JsonObject({**gpt2, "n_layer": 2.0}, "g.json"), {})
  with pytest.raises(ValueError, match="g.json lacks the field 'n_positions'"):
    formats.Gpt2Format.fields(JsonObject({**gpt2, "n_positions": None}, "g.json"), {})


# Hostile templates: each fails fast with a ChatTemplateError naming the template's file.
HOSTILE = {
    "repetition": "{{ 'a' * 1000000000 }}",
    "repeated list": "{{ messages * 100000000 }}",
    "power": "{{ 7 ** 9999999 }}",
    "printf width": "{{ '%0999999999d' % 1 }}",
    "format width": "{{ '{:>999999999}'.format(1) }}",
    "filter width": "{{ 'x' | center(999999999) }}",
    "doubling": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
                "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    "output": "{% for i in range(100000) %}{% for m in messages %}{{ m['content'] * 100 }}"
              "{% endfor %}{% endfor %}",
    "recursion": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "escape": "{{ messages.append(1) }}",
    "zero division": "{{ 1 / 0 }}",
    "bad key": "{{ messages[5]['content'] }}{{ {}['x'] }}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_template_fails_cleanly_naming_its_file(tmp_path, name):
  _tokenizer(HOSTILE[name]).save(str(tmp_path))
  os.remove(tmp_path / "tokenizer_config.json")  # the template goes to its own file
  _tokenizer().save_config(str(tmp_path))
  config = json.loads((tmp_path / "tokenizer_config.json").read_text())
  del config["chat_template"]
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  (tmp_path / chat.TEMPLATE_FILE).write_text(HOSTILE[name])
  tokenizer = pretrained.ChatTokenizer.from_directory(str(tmp_path))
  error = _finishes(lambda: tokenizer.render_chat(MESSAGES), seconds=chat.RENDER_SECONDS + 20)
  assert isinstance(error, pretrained.ChatTemplateError), repr(error)
  assert str(tmp_path / chat.TEMPLATE_FILE) in str(error)


def test_a_template_that_runs_too_long_is_stopped(tmp_path, monkeypatch):
  monkeypatch.setattr(chat, "RENDER_SECONDS", 0.5)
  spin = ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
          "done")
  _tokenizer(spin).save(str(tmp_path))
  tokenizer = pretrained.ChatTokenizer.from_directory(str(tmp_path))
  error = _finishes(lambda: tokenizer.render_chat(MESSAGES), seconds=20)
  assert isinstance(error, pretrained.ChatTemplateError)
  assert "tokenizer_config.json: chat_template: the chat template was stopped after 0.5 s" in str(
      error)
  # The watchdog of a render that finished in time never fires later.
  fine = _tokenizer()
  for _ in range(20):
    assert fine.render_chat(MESSAGES).startswith("<|user|>")


def test_template_files_are_checked_before_rendering(tmp_path):
  _tokenizer().save(str(tmp_path))
  (tmp_path / chat.TEMPLATE_FILE).write_bytes(b"{{ '\xff' }}")
  with pytest.raises(pretrained.ChatTemplateError, match="chat_template.jinja is not UTF-8"):
    pretrained.ChatTokenizer.from_directory(str(tmp_path))
  (tmp_path / chat.TEMPLATE_FILE).write_text("{% for %}")
  with pytest.raises(pretrained.ChatTemplateError, match="chat_template.jinja: the chat "
                                                         "template needs something"):
    pretrained.ChatTokenizer.from_directory(str(tmp_path))
  (tmp_path / chat.TEMPLATE_FILE).write_text(" " * (chat.MAX_TEMPLATE_BYTES + 1))
  with pytest.raises(pretrained.ChatTemplateError, match="over 1 MiB"):
    pretrained.ChatTokenizer.from_directory(str(tmp_path))
