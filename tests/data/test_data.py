"""Readers of the Debian-packaged corpora, packing and the grain pipeline."""

import numpy as np
import pytest

from attention_jax.data import builders, pipeline, sword, tokenizers


def test_osis_markup_is_cleaned():
  raw = ('In the <w lemma="strong:H7225">beginning</w> God<note type="x-study">Heb. '
         'Elohim</note> created &amp; <milestone type="x-p"/>made.  ')
  assert sword.clean_osis(raw) == "In the beginning God created & made."


def test_missing_debian_package_names_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match="sudo apt-get install sword-text-sparv"):
    sword.module_dir("reina_valera", root=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="sudo apt-get install dataset-fashion-mnist"):
    builders.read_idx(str(tmp_path / "train-images-idx3-ubyte.gz"))


def test_bibles_are_read_and_aligned():
  kjv, rv = sword.read_module("kjv"), sword.read_module("reina_valera")
  assert len(kjv) == len(rv) == 32361  # entries, headings included
  genesis_1_1 = kjv.index("In the beginning God created the heaven and the earth.")
  assert rv[genesis_1_1].startswith("EN el principio crió Dios los cielos y la tierra")
  assert kjv[-1] == "The grace of our Lord Jesus Christ be with you all. Amen."
  assert 4.0e6 < sum(map(len, kjv)) < 4.3e6


def test_world_english_bible_joins_the_kjv_for_pretraining(tmp_path):
  web = sword.read_module("web")
  assert len([v for v in web if v]) == 37551
  assert "In the beginning, God created the heavens and the earth." in web  # note removed
  kjv_train = pipeline.texts("kjv_text", "train", str(tmp_path))
  both = pipeline.texts("kjv_web_text", "train", str(tmp_path))
  # The KJV's training verses first (the same split as kjv_text), then the WEB's.
  assert both[:len(kjv_train)] == kjv_train
  assert len(both) - len(kjv_train) == sum(sword.split_of(i) == "train" for i in range(37551))
  assert both[-1].startswith("He who testifies these things says")


def test_wordnet_glosses_and_fashion_mnist():
  glosses = list(builders.wordnet_glosses())
  assert len(glosses) == 117659
  assert {label for _, label in glosses} == set(range(45))
  images = builders.read_idx(f"{builders.FASHION_MNIST_DIR}/t10k-images-idx3-ubyte.gz")
  labels = builders.read_idx(f"{builders.FASHION_MNIST_DIR}/t10k-labels-idx1-ubyte.gz")
  assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
  assert set(np.unique(labels)) == set(range(10))


def test_pack_documents_keeps_every_token_in_order():
  docs = [np.arange(1, 4), np.arange(10, 12), np.arange(20, 26), np.arange(30, 31)]
  packed = pipeline.pack_documents(docs, seq_len=4)
  tokens, segments, positions = packed["tokens"], packed["segment_ids"], packed["positions"]
  assert tokens.shape == segments.shape == positions.shape == (3, 5)
  np.testing.assert_array_equal(tokens[segments > 0], np.concatenate(docs))
  np.testing.assert_array_equal(segments, [[1, 1, 1, 2, 2], [1, 1, 1, 1, 1], [1, 2, 0, 0, 0]])
  np.testing.assert_array_equal(positions, [[0, 1, 2, 0, 1], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]])


def test_lm_windows_and_resumable_iterator():
  stream = np.arange(100, dtype=np.int32)
  windows = pipeline.lm_windows(stream, seq_len=9)
  assert len(windows) == 11
  np.testing.assert_array_equal(windows[1], np.arange(9, 19))  # 10 tokens: inputs + target
  it = pipeline.train_iterator(windows, global_batch=4, seed=0)
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  expected = [next(it) for _ in range(5)]  # crosses into the second (reshuffled) epoch
  resumed = pipeline.train_iterator(windows, global_batch=4, seed=0)
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed), want)
  seen = np.concatenate([b[:, 0] for b in first[:2]])
  assert len(set(seen.tolist())) == 8  # no repeats within an epoch
  with pytest.raises(ValueError, match="fewer than seq_len"):
    pipeline.lm_windows(stream[:5], seq_len=9)


def test_tokenizers_round_trip(tmp_path):
  byte = tokenizers.ByteTokenizer()
  assert byte.decode(byte.encode("Génesis 1:1")) == "Génesis 1:1"
  texts = ["the lord is my shepherd", "i shall not want", "he maketh me to lie down"] * 20
  for kind in ("wordpiece", "bpe"):
    tok = tokenizers.SubwordTokenizer.train(texts, vocab_size=120, kind=kind)
    tokenizers.save(tok, str(tmp_path))
    loaded = tokenizers.load(str(tmp_path))
    ids, mask = loaded.encode_padded("the lord is my shepherd", 12)
    assert ids[0] == loaded.bos_id and mask.sum() == list(ids).index(loaded.eos_id) + 1
    assert loaded.decode(ids[1:]).replace(" ", "") == "thelordismyshepherd"


def test_byte_level_bpe_reserves_the_chat_tokens(tmp_path):
  from attention_jax import pretrained
  texts = ["In the beginning God created the heaven and the earth.", "Génesis 1:1"] * 20
  bpe = tokenizers.train_byte_level_bpe(texts, vocab_size=300)
  assert [bpe.token_to_id(t) for t in tokenizers.CHAT_SPECIAL_TOKENS] == [0, 1, 2]
  assert bpe.decode(bpe.encode("naïve Ωmega").ids) == "naïve Ωmega"  # unseen: its bytes
  chat = pretrained.ChatTokenizer.chatml(bpe)
  messages = [{"role": "user", "content": "Define the word harp."},
              {"role": "assistant", "content": "a stringed instrument"}]
  assert chat.render_chat(messages[:1], add_generation_prompt=True) == (
      "<|im_start|>user\nDefine the word harp.<|im_end|>\n<|im_start|>assistant\n")
  ids, mask = chat.encode_chat_with_mask(messages)
  assert chat.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False) == (
      "a stringed instrument<|im_end|>\n")
  assert chat.stop_ids == (0, 2) and chat.pad_id == 0
  chat.save(str(tmp_path))
  loaded = pretrained.ChatTokenizer.from_directory(str(tmp_path))
  assert loaded.encode_chat(messages) == ids and loaded.stop_ids == chat.stop_ids
  with pytest.raises(ValueError, match="vocab_size >= 259"):
    tokenizers.train_byte_level_bpe(texts, vocab_size=200)
  with pytest.raises(ValueError, match="needs the special tokens <|im_start|>"):
    pretrained.ChatTokenizer.chatml(tokenizers.train_byte_level_bpe(texts, 300, ["<|x|>"]))


def test_instruction_data_comes_from_wordnet_and_the_bibles_held_out_by_word_and_verse():
  from attention_jax.data import instructions
  define = {s: instructions.build("define", s) for s in ("train", "validation")}
  assert len(define["train"]) > 50_000 and len(define["validation"]) > 1_000
  words = {s: {c[0]["content"][len("Define the word "):-1] for c in define[s]} for s in define}
  assert not words["train"] & words["validation"]  # no held-out word is trained on
  harp = [c[1]["content"] for c in define["train"] + define["validation"]
          if c[0]["content"] == "Define the word harp."]
  assert any(g.startswith("a chordophone that has a triangular frame") for g in harp)
  synonyms = instructions.build("synonyms", "validation")
  assert synonyms and all(c[1]["content"] for c in synonyms)
  translate = instructions.build("translate", "test")
  assert 400 < len(translate) < 1000  # 2% of the 31,102 aligned verses
  assert translate[0][0]["content"].startswith("Translate to Spanish: ")
  with pytest.raises(ValueError, match="unknown instruction task 'summarise'"):
    instructions.build("summarise", "train")
