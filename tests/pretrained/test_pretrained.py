"""Hugging Face import/export: parity of our MiniLM with a numpy BERT on the real weights,
sentence embeddings, the tokenizer, round trips, and the errors for bad checkpoints."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from attention_jax import models, pretrained
from attention_jax.layers import LoraSpec
from attention_jax.pretrained import hub
from tests.pretrained.numpy_bert import bert_hidden

MINILM = "all-MiniLM-L6-v2"
SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.",
             "The girl is carrying a baby.",
             "Quantum chromodynamics describes the strong interaction between quarks."]


@pytest.fixture(scope="module")
def minilm():
  return pretrained.load(MINILM)


@pytest.mark.parametrize("kernel", ["dot_product", "flash"])
def test_minilm_hidden_states_equal_numpy_bert(minilm, kernel):
  model, params, tokenizer = minilm
  config, tensors, _ = pretrained.read_checkpoint(MINILM)
  batch = tokenizer(SENTENCES)
  assert batch["attention_mask"].min() == 0  # padding is exercised
  ours = models.with_options(model, kernel=kernel).apply({"params": params}, batch["input_ids"],
                                          batch["token_type_ids"], batch["attention_mask"])
  reference = bert_hidden(tensors, config, batch["input_ids"],
                          batch["attention_mask"].astype(np.float64), batch["token_type_ids"])
  real = batch["attention_mask"].astype(bool)
  assert np.abs(np.asarray(ours["hidden"])[real] - reference[real]).max() <= 1e-5


@pytest.mark.parametrize("kernel", ["dot_product", "flash"])
def test_sentence_embeddings_rank_a_paraphrase_above_unrelated_text(kernel):
  embeddings = pretrained.encode(SENTENCES, kernel=kernel)
  assert embeddings.shape == (4, 384) and embeddings.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
  cosine = embeddings @ embeddings.T
  assert cosine[0, 1] > 0.6  # paraphrases
  assert max(abs(cosine[0, 2]), abs(cosine[0, 3]), abs(cosine[2, 3])) < 0.2
  assert cosine[0, 1] - max(cosine[0, 2], cosine[0, 3]) > 0.5


def test_encode_rows_do_not_depend_on_batching_or_order():
  together = pretrained.encode(SENTENCES)
  one_by_one = np.concatenate([pretrained.encode(s) for s in SENTENCES])
  reversed_small_batches = pretrained.encode(SENTENCES[::-1], batch_size=3)[::-1]
  np.testing.assert_allclose(together, one_by_one, atol=1e-5)
  np.testing.assert_allclose(together, reversed_small_batches, atol=1e-5)
  assert pretrained.encode([]).shape == (0, 384)
  with pytest.raises(TypeError, match="list of strings"):
    pretrained.encode([1, 2])


def test_tokenizer_is_uncased_wordpiece_with_padding_and_truncation(minilm):
  tokenizer = minilm[2]
  batch = tokenizer(["Hello world!", "HELLO WORLD! unaffable"])
  np.testing.assert_array_equal(batch["input_ids"][0, :5], [101, 7592, 2088, 999, 102])
  np.testing.assert_array_equal(batch["input_ids"][1, :4], [101, 7592, 2088, 999])
  assert batch["input_ids"].shape[1] > 5 and batch["input_ids"][0, 5:].tolist() == [0] * (
      batch["input_ids"].shape[1] - 5)
  assert batch["attention_mask"][0].sum() == 5
  long = tokenizer(["word " * 1000])
  assert long["input_ids"].shape == (1, 256)  # sentence-transformers' max_seq_length
  assert long["input_ids"][0, -1] == 102  # [SEP] survives truncation
  assert tokenizer(["word " * 1000], max_length=8)["input_ids"].shape == (1, 8)
  # The vocab.txt route (a different code path in `tokenizers`) agrees with tokenizer.json.
  directory, _ = pretrained.resolve(MINILM)
  from tokenizers.implementations import BertWordPieceTokenizer
  from_vocab = pretrained.PretrainedTokenizer(
      BertWordPieceTokenizer(os.path.join(directory, "vocab.txt"), lowercase=True)._tokenizer,
      256)
  np.testing.assert_array_equal(from_vocab(SENTENCES)["input_ids"],
                                tokenizer(SENTENCES)["input_ids"])


def test_minilm_exports_back_to_the_same_tensors(minilm, tmp_path):
  model, params, tokenizer = minilm
  pretrained.export(model, params, str(tmp_path), tokenizer)
  _, original, _ = pretrained.read_checkpoint(MINILM)
  written = load_file(str(tmp_path / "model.safetensors"))
  assert set(original) - set(written) == {"embeddings.position_ids"}  # a buffer
  for name, tensor in written.items():
    np.testing.assert_array_equal(tensor, original[name], err_msg=name)
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["hidden_size"] == 384 and config["hidden_act"] == "gelu"
  assert pretrained.load(str(tmp_path))[2](["Hello world!"])["input_ids"].tolist() == [
      [101, 7592, 2088, 999, 102]]


def _random_params(model, method=None):
  kwargs = {"method": method} if method else {}
  params = model.init(jax.random.key(1), *model.example_inputs(), **kwargs)["params"]
  # Break the initialiser's symmetries (zero biases, unit scales) so a swapped tensor shows.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


def _assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("options", [{}, {"num_classes": 5}, {"mlm": True}],
                         ids=["encoder", "classifier", "mlm-head"])
def test_bert_round_trip(tmp_path, options):
  options = dict(options)
  mlm = options.pop("mlm", False)
  model = models.create("bert-tiny", **options)
  params = _random_params(model, model.pretrain if mlm else None)
  pretrained.export(model, params, str(tmp_path))
  loaded_model, loaded, tokenizer = pretrained.load(str(tmp_path))
  assert tokenizer is None
  _assert_same_params(params, loaded)
  tokens = jnp.array([[5, 9, 3, 7, 1, 0]])
  mask = jnp.array([[1, 1, 1, 1, 1, 0]])
  method = model.pretrain if mlm else None
  want = model.apply({"params": params}, tokens, attention_mask=mask, method=method)
  got = loaded_model.apply({"params": loaded}, tokens, attention_mask=mask, method=method)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), want, got)


def test_gpt2_round_trip_and_hf_naming(tmp_path):
  model = models.create("gpt-tiny", dropout_rate=0.0)
  params = _random_params(model)
  pretrained.export(model, params, str(tmp_path / "ours"))
  loaded_model, loaded, _ = pretrained.load(str(tmp_path / "ours"))
  _assert_same_params(params, loaded)
  tokens = jnp.array([[5, 9, 3, 7, 1]])
  np.testing.assert_allclose(model.apply({"params": params}, tokens),
                             loaded_model.apply({"params": loaded}, tokens), atol=1e-6)
  # As transformers saves GPT2LMHeadModel: prefixed names, the tied head, attention buffers.
  tensors = load_file(str(tmp_path / "ours" / "model.safetensors"))
  assert tensors["h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: [in, 3 * width]
  hf = {"transformer." + k: v for k, v in tensors.items()}
  hf["lm_head.weight"] = tensors["wte.weight"]
  hf["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
  (tmp_path / "hf").mkdir()
  save_file(hf, str(tmp_path / "hf" / "model.safetensors"))
  shutil.copy(tmp_path / "ours" / "config.json", tmp_path / "hf" / "config.json")
  _assert_same_params(params, pretrained.load(str(tmp_path / "hf"))[1])


def test_bad_checkpoints_fail_with_names(tmp_path, monkeypatch):
  model = models.create("bert-tiny")
  pretrained.export(model, _random_params(model), str(tmp_path))
  weights = str(tmp_path / "model.safetensors")
  with pytest.raises(ValueError, match="SHA-256 [0-9a-f]{64}, expected 00"):
    pretrained.load(str(tmp_path), sha256="00" * 32)
  assert pretrained.load(str(tmp_path), sha256=hub.sha256_of(weights))[0].config.width == 32

  tensors = load_file(weights)
  del tensors["encoder.layer.1.attention.self.key.weight"]
  tensors["encoder.layer.9.extra.weight"] = np.zeros(3, np.float32)
  save_file(tensors, weights)
  with pytest.raises(ValueError, match=r"missing tensors: encoder\.layer\.1\.attention\.self\."
                     r"key\.weight; unexpected tensors: encoder\.layer\.9\.extra\.weight"):
    pretrained.load(str(tmp_path))

  tensors = load_file(weights)
  tensors.pop("encoder.layer.9.extra.weight")
  tensors["encoder.layer.1.attention.self.key.weight"] = np.zeros((32, 16), np.float32)
  save_file(tensors, weights)
  with pytest.raises(ValueError, match=r"wrong shape: blocks_1/attention/key/kernel"):
    pretrained.load(str(tmp_path))

  with pytest.raises(FileNotFoundError, match="neither a known checkpoint name"):
    pretrained.load(str(tmp_path / "nowhere"))
  os.remove(tmp_path / "config.json")
  with pytest.raises(FileNotFoundError, match="lacks config.json"):
    pretrained.load(str(tmp_path))
  monkeypatch.setitem(hub.KNOWN, "uninstalled", hub.KnownCheckpoint(
      "no_such_package_xyz", "model", "00" * 32, "pip install --no-deps no-such-package"))
  with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-package"):
    pretrained.load("uninstalled")


def test_export_refuses_unmerged_lora_adapters(tmp_path):
  model = models.create("bert-tiny", lora=LoraSpec(2))
  params = model.init(jax.random.key(0), *model.example_inputs())["params"]
  with pytest.raises(ValueError, match="query_lora.*lora.merge"):
    pretrained.export(model, params, str(tmp_path))


def test_mean_pooled_classifier_round_trips(tmp_path):
  model = models.create("bert-tiny", num_classes=4, classifier_pooling="mean")
  params = _random_params(model)
  pretrained.export(model, params, str(tmp_path))
  loaded_model, loaded, _ = pretrained.load(str(tmp_path))
  assert loaded_model.config.classifier_pooling == "mean"
  tokens, mask = jnp.array([[5, 9, 3, 0]]), jnp.array([[1, 1, 1, 0]])
  np.testing.assert_allclose(
      model.apply({"params": params}, tokens, attention_mask=mask)["logits"],
      loaded_model.apply({"params": loaded}, tokens, attention_mask=mask)["logits"], atol=1e-6)


def test_older_bert_layouts_load(tmp_path):
  """gamma/beta LayerNorm names (TF ports), no pooler (BertForMaskedLM), a decoder tensor."""
  model = models.create("bert-tiny")
  params = _random_params(model, model.pretrain)
  pretrained.export(model, params, str(tmp_path))
  tensors = load_file(str(tmp_path / "model.safetensors"))
  renamed = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
      "LayerNorm.bias", "LayerNorm.beta"): v for k, v in tensors.items()
      if not k.startswith("pooler.")}
  renamed["cls.predictions.decoder.weight"] = tensors["embeddings.word_embeddings.weight"]
  save_file(renamed, str(tmp_path / "model.safetensors"))
  _, loaded, _ = pretrained.load(str(tmp_path))
  fresh_pooler = loaded.pop("pooler")
  assert fresh_pooler["kernel"].shape == (32, 32)
  params = dict(params)
  params.pop("pooler")
  _assert_same_params(params, loaded)


def test_a_tokenizer_that_is_not_wordpiece_is_left_out(tmp_path):
  from tokenizers import Tokenizer, models as token_models, pre_tokenizers, trainers
  model = models.create("gpt-tiny")
  bpe = Tokenizer(token_models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
  bpe.train_from_iterator(["in the beginning"] * 10, trainers.BpeTrainer(vocab_size=60))
  pretrained.export(model, _random_params(model), str(tmp_path))
  bpe.save(str(tmp_path / "tokenizer.json"))
  loaded_model, _, tokenizer = pretrained.load(str(tmp_path))
  assert tokenizer is None and loaded_model.config.width == 32


@pytest.mark.parametrize("name,options", [
    ("gpt-tiny", {}), ("bert-tiny", {}),
    # sliding/full groups of 2, scanned, and a fifth (sliding) layer unrolled above them
    ("gemma-tiny", dict(depth=5, layer_types=("sliding", "full") * 2 + ("sliding",)))])
def test_stacked_blocks_load_and_export_as_hugging_face_layers(tmp_path, name, options):
  model = models.create(name, **options)
  params = _random_params(model)
  pretrained.export(model, params, str(tmp_path / "unrolled"))
  scanned, stacked, _ = pretrained.load(str(tmp_path / "unrolled"), scan_layers=True)
  assert scanned.config.scan_layers and set(stacked) >= {"blocks"}
  period = model.config.layer_period()
  assert jax.tree.leaves(stacked["blocks"])[0].shape[0] == model.config.depth // period
  assert ("block_4" in stacked) == (name == "gemma-tiny")
  tokens = jnp.array([[5, 9, 3, 7, 1]])
  out = lambda m, p: jax.tree.leaves(m.apply({"params": p}, tokens))
  for want, got in zip(out(model, params), out(scanned, stacked)):
    np.testing.assert_allclose(want, got, atol=1e-5)
  pretrained.export(scanned, stacked, str(tmp_path / "from_stacked"))
  same = lambda d: load_file(str(tmp_path / d / "model.safetensors"))
  jax.tree.map(np.testing.assert_array_equal, same("unrolled"), same("from_stacked"))
