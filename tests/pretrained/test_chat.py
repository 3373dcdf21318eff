"""Chat templates rendered by us equal transformers' `apply_chat_template` on tokenizers that
transformers itself saves (no hub download), and the assistant mask covers exactly the
assistant turns."""

import pytest

from attention_jax import pretrained

transformers = pytest.importorskip("transformers")

TEMPLATES = {  # the published templates' logic, shortened where it only adds tool calls
    "llama3": (
        "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}"
        "<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
        "{% endif %}"),
    "chatml-qwen": (
        "{%- if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
        "assistant.<|im_end|>\n{%- endif %}\n{%- for message in messages %}<|im_start|>"
        "{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}"
        "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "zephyr-tinyllama": (
        "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + "
        "message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
        "{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == "
        "'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}"
        "\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
        "{% endfor %}"),
    "gemma": (  # Gemma 2's (Gemma 3's adds the system turn to the first user turn)
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]"
        "['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first = "
        "'' %}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception("
        "'Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role "
        "= message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + (first if "
        "loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"),
    "qwen3": (  # its thinking logic, without the tool calls
        "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\n' + messages[0].content"
        " + '<|im_end|>\n' }}{%- endif %}"
        "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
        "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - "
        "loop.index0 %}{%- if ns.multi_step_tool and message.role == 'user' and "
        "message.content is string %}{%- set ns.multi_step_tool = false %}"
        "{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
        "{%- for message in messages %}{%- set content = message.content %}"
        "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
        "{{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}"
        "{%- elif message.role == 'assistant' %}{%- set reasoning_content = '' %}"
        "{%- if '</think>' in content %}{%- set reasoning_content = content.split('</think>')[0]"
        ".rstrip('\n').split('<think>')[-1].lstrip('\n') %}{%- set content = content.split("
        "'</think>')[-1].lstrip('\n') %}{%- endif %}"
        "{%- if loop.index0 > ns.last_query_index %}"
        "{%- if loop.last or (not loop.last and reasoning_content) %}"
        "{{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + "
        "'\n</think>\n\n' + content.lstrip('\n') }}"
        "{%- else %}{{- '<|im_start|>' + message.role + '\n' + content }}{%- endif %}"
        "{%- else %}{{- '<|im_start|>' + message.role + '\n' + content }}{%- endif %}"
        "{{- '<|im_end|>\n' }}{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
        "{%- if enable_thinking is defined and enable_thinking is false %}"
        "{{- '<think>\n\n</think>\n\n' }}{%- endif %}{%- endif %}"),
}
SPECIAL = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
           "<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|system|>", "</s>",
           "<start_of_turn>", "<end_of_turn>", "<think>", "</think>"]
MESSAGES = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Define the word harp."},
            {"role": "assistant", "content": "A stringed instrument plucked by hand."},
            {"role": "user", "content": "And lyre?"},
            {"role": "assistant", "content": "A small harp of ancient Greece."}]


def _save_tokenizer(directory, template):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  corpus = [m["content"] for m in MESSAGES] * 20 + ["In the beginning God created the heaven."]
  tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=300, special_tokens=SPECIAL,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizer, bos_token="<|begin_of_text|>", eos_token="</s>",
      chat_template=template)
  fast.save_pretrained(directory)
  return fast


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_chat_templates_render_as_transformers_renders_them(tmp_path, name):
  reference = _save_tokenizer(tmp_path, TEMPLATES[name])
  ours = pretrained.ChatTokenizer.from_directory(str(tmp_path))
  for messages, prompt in ((MESSAGES, False), (MESSAGES[:4], True), (MESSAGES[1:2], True)):
    want = reference.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=prompt)
    assert ours.render_chat(messages, add_generation_prompt=prompt) == want
    want_ids = reference.apply_chat_template(messages, tokenize=True,
                                             add_generation_prompt=prompt)
    want_ids = want_ids["input_ids"] if hasattr(want_ids, "keys") else want_ids
    assert ours.encode_chat(messages, add_generation_prompt=prompt) == list(want_ids)

  if name == "qwen3":  # the first reply renders without its empty thought once a turn follows
    with pytest.raises(pretrained.ChatTemplateError, match="up to assistant turn 2 "
                       "differently once later turns follow it"):
      ours.encode_chat_with_mask(MESSAGES)
    ids, mask = ours.encode_chat_with_mask(MESSAGES[:3])  # one reply: masked by definition
    assert ours.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False) == (
        "<think>\n\n</think>\n\nA stringed instrument plucked by hand.<|im_end|>\n")
    return
  ids, mask = ours.encode_chat_with_mask(MESSAGES)
  trained = ours.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=True)
  assert "A stringed instrument plucked by hand." in trained
  assert "A small harp of ancient Greece." in trained
  assert "harp." not in trained.replace("ancient Greece", "")  # no user text
  assert "Answer briefly" not in trained


@pytest.mark.parametrize("enable_thinking", [True, False, None])
def test_qwen3_thinking_switch_renders_as_transformers_renders_it(tmp_path, enable_thinking):
  """Template variables reach the template as apply_chat_template's keyword arguments do:
  Qwen3's enable_thinking=False writes an empty thought after the generation prompt."""
  reference = _save_tokenizer(tmp_path, TEMPLATES["qwen3"])
  ours = pretrained.ChatTokenizer.from_directory(str(tmp_path))
  switch = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
  thought = [*MESSAGES[:2], {"role": "assistant", "content":
                             "<think>\nStrings, a frame.\n</think>\n\nAn instrument."}]
  for messages in (MESSAGES[:4], MESSAGES[1:2], thought, thought + MESSAGES[3:4]):
    want = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         **switch)
    assert ours.render_chat(messages, add_generation_prompt=True, **switch) == want
  rendered = ours.render_chat(MESSAGES[1:2], add_generation_prompt=True, **switch)
  assert rendered.endswith("<think>\n\n</think>\n\n") == (enable_thinking is False)
  with pytest.raises(pretrained.ChatTemplateError, match="'bos_token' is not one a caller"):
    ours.render_chat(MESSAGES, bos_token="<s>")
  with pytest.raises(pretrained.ChatTemplateError, match="must be a boolean, number"):
    ours.render_chat(MESSAGES, enable_thinking=[True])


def test_templates_we_cannot_render_say_why(tmp_path):
  _save_tokenizer(tmp_path, "{% generation %}{{ messages[0]['content'] }}{% endgeneration %}")
  with pytest.raises(pretrained.ChatTemplateError, match="does not render.*generation"):
    pretrained.ChatTokenizer.from_directory(str(tmp_path))
  _save_tokenizer(tmp_path, "{{ raise_exception('only user turns') }}")
  tokenizer = pretrained.ChatTokenizer.from_directory(str(tmp_path))
  with pytest.raises(pretrained.ChatTemplateError, match="refused the messages: only user"):
    tokenizer.render_chat(MESSAGES)
  with pytest.raises(pretrained.ChatTemplateError, match="'role' and 'content'"):
    tokenizer.render_chat([{"text": "hi"}])


@pytest.mark.slow
def test_a_chat_session_streams_replies_from_an_exported_llama(tmp_path):
  import os
  import subprocess
  import sys
  import jax
  from attention_jax import models
  _save_tokenizer(tmp_path, TEMPLATES["chatml-qwen"])
  tokenizer = pretrained.ChatTokenizer.from_directory(str(tmp_path))
  model = models.create("llama-tiny", vocab_size=320)
  params = model.init(jax.random.key(0), *model.example_inputs())["params"]
  pretrained.export(model, params, str(tmp_path), tokenizer)
  loaded, _, again = pretrained.load(str(tmp_path))
  assert again.render_chat(MESSAGES) == tokenizer.render_chat(MESSAGES)
  assert again.stop_ids == (tokenizer.eos_id,)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = subprocess.run(
      [sys.executable, "-m", "experiments.generate", f"--init_from={tmp_path}", "--chat",
       "--max_new_tokens=6", "--temperature=0"], input="Define harp.\nAnd lyre?\n\n",
      capture_output=True, text=True, timeout=300, env=env,
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  assert result.returncode == 0, result.stderr
  assert result.stderr.count("tokens/s") == 2  # one report per reply

  small = models.create("llama-tiny", vocab_size=128)
  pretrained.export(small, small.init(jax.random.key(0), *small.example_inputs())["params"],
                    str(tmp_path / "small"), tokenizer)
  with pytest.raises(ValueError, match="300 tokens but the model's vocabulary only 128"):
    pretrained.load(str(tmp_path / "small"))
