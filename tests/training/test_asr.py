"""The asr task: configs/whisper_kjv_speech.py:tiny trains on spoken verses end to end, and
its workdir evaluates on the held-out voice."""

import jax
import numpy as np
import pytest

from attention_jax.data import audio, pipeline
from attention_jax.training import evaluation, tasks, train_and_evaluate
from attention_jax.training import workdir as workdir_lib
from attention_jax.training.metrics import read_metrics
from configs import whisper_kjv_speech


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  config = whisper_kjv_speech.get_config("tiny")
  config.dataset.data_dir = str(tmp_path_factory.getbasetemp() / "tfds_speech")
  config.num_devices = 1
  return config


@pytest.fixture(scope="module")
def trained(config, tmp_path_factory):
  """(the tiny config's workdir after training, its results): trained once for the module."""
  workdir = str(tmp_path_factory.mktemp("asr") / "run")
  return workdir, train_and_evaluate(config.copy_and_resolve_references(), workdir)


def test_examples_are_features_and_prompted_tokens(config):
  task = tasks.create(config)
  example = task.sources["train"][0]
  encoded = task._encode(example)  # pylint: disable=protected-access
  frames = round(config.dataset.max_seconds * 100)
  assert encoded["features"].shape == (frames, 80)
  waveform = audio.decode_audio(example["flac"])[:round(config.dataset.max_seconds * 16000)]
  np.testing.assert_allclose(encoded["features"], audio.log_mel_spectrogram(
      waveform, pad=True, window_seconds=config.dataset.max_seconds), atol=1e-6)
  tok = task.tokenizer  # trained here, with Whisper's special tokens after the text's
  assert tok.timestamp_begin == tok.no_timestamps_id + 1 == tok.vocab_size - 1501
  assert tok.decode([tok.end_id]) == "" and tok.no_speech_id is not None
  text_ids = tok.encode(" " + pipeline.as_text(example["text"]))
  assert max(text_ids) < tok.end_id and tok.decode(text_ids) == " " + pipeline.as_text(
      example["text"])
  prompt = [tok.start_id, tok.language_id("en"), tok.task_ids["transcribe"],
            tok.no_timestamps_id]
  want = (prompt + text_ids)[:config.dataset.seq_len] + [tok.end_id]
  n = len(want) - 1
  assert encoded["tokens_in"][:n].tolist() == want[:-1]
  assert encoded["tokens_out"][:n].tolist() == want[1:]
  assert encoded["token_mask"].tolist() == [0] * 3 + [1] * (n - 3) + [0] * (
      config.dataset.seq_len - n)


@pytest.mark.slow
def test_tiny_speech_config_trains_and_scores_the_held_out_voice(trained, tmp_path):
  workdir, results = trained
  losses = [r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r]
  assert len(losses) == 10 and np.isfinite(losses).all() and losses[-1] < losses[0]
  assert results["eval/wer"] >= 0 and 0 <= results["eval/cer"]
  _, task, model, params, step = workdir_lib.load(workdir, eval_split="test_held_out_voice")
  assert step == 10
  _, data = task.datasets()
  metrics = evaluation.evaluate(task, jax.jit(evaluation.make_eval_step(task, model)), params,
                                pipeline.eval_batches(data, 8, 1), model,
                                prefix="test_held_out_voice")
  assert set(metrics) >= {"test_held_out_voice/loss", "test_held_out_voice/wer",
                          "test_held_out_voice/cer"}
  # the transcripts are the task's greedy decoding, and score as wer.error_rates says
  examples = [task.sources["test_held_out_voice"][i] for i in range(4)]
  texts = task.transcribe(model, params, examples)
  assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
  # experiments.transcribe reads the workdir: its 2 s windows, its Whisper tokenizer.
  import soundfile
  from experiments import transcribe
  model, params, tokenizer = workdir_lib.load_model(workdir)
  path = str(tmp_path / "verse.wav")
  soundfile.write(path, audio.decode_audio(examples[0]["flac"]), 16000)
  results = transcribe.transcribe_files(model, params, tokenizer, [path], temperatures=(0.0,),
                                        timestamps=False, logprob_threshold=None,
                                        no_speech_threshold=None,
                                        compression_ratio_threshold=None)
  # experiments.alignment_heads ranks the heads on festival's word times and keeps the best.
  import subprocess
  import sys
  from tests.training.test_parallel import REPO
  run = subprocess.run([sys.executable, "-m", "experiments.alignment_heads",
                        f"--workdir={workdir}", "--split=train", "--write", "--heads=1"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr
  assert "| decoder layer, head | word-start error (s) |" in run.stdout
  _, _, kept = workdir_lib.load_model(workdir)
  assert len(kept.alignment_heads) == 1 and f"heads [{kept.alignment_heads[0]}]" in run.stdout
  seconds = len(audio.decode_audio(examples[0]["flac"])) / 16000
  assert results[0]["seconds"] == pytest.approx(seconds, abs=1e-3)
  assert results[0]["segments"][-1]["end"] == pytest.approx(seconds, abs=0.01) or not results[
      0]["segments"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_fine_tuning_a_whisper_checkpoint(config, trained, tmp_path, mode):
  """init_from a Hugging Face Whisper directory (here one we export from a run): its
  architecture, weights and tokenizer carry over; LoRA trains only the adapters."""
  from attention_jax import pretrained
  workdir, _ = trained
  model, params, tokenizer = workdir_lib.load_model(workdir)
  pretrained.export(model, params, str(tmp_path / "hf"), tokenizer)
  tuned = config.copy_and_resolve_references()
  tuned.init_from = str(tmp_path / "hf")
  tuned.finetune.mode = mode
  tuned.finetune.lora_targets = "query,key,value,out"
  for field in ("width", "depth", "decoder_depth", "num_heads", "mlp_dim"):
    del tuned.model[field]  # the checkpoint's
  results = train_and_evaluate(tuned, str(tmp_path / mode))
  assert np.isfinite(results["eval/loss"]) and "eval/wer" in results
  _, task, tuned_model, tuned_params, _ = workdir_lib.load(str(tmp_path / mode))
  assert task.tokenizer.encode(" In the beginning") == tokenizer.encode(" In the beginning")
  assert tuned_model.config.width == model.config.width
  if mode == "lora":
    from attention_jax.layers import lora
    merged = lora.merge(tuned_params, tuned_model.config.lora)
    leaves = lambda tree: dict(jax.tree_util.tree_leaves_with_path(tree))
    before, after = leaves(params), leaves(merged)
    changed = [k for k in before if not np.allclose(before[k], after[k])]
    assert changed and all("attention" in jax.tree_util.keystr(k) for k in changed)


def test_matched_starts_pair_words_that_match():
  from attention_jax.models.whisper_alignment import WordTiming, matched_starts
  timings = [WordTiming(w, s, s + 0.1, 1.0) for w, s in
             [(" And", 0.1), (" the", 0.3), (" LORD's", 0.5), (" 12", 0.9), (" sons.", 1.2)]]
  reference = [("And", 0.0, 0.2), ("the", 0.2, 0.4), ("LORD", 0.4, 0.8), ("twelve", 0.8, 1.0),
               ("sons", 1.0, 1.3)]
  assert matched_starts(timings, reference) == [(0.1, 0.0), (0.3, 0.2), (1.2, 1.0)]


def test_training_adds_ctc_on_the_encoder(config):
  """With ctc_weight w the training loss is (1 - w) · cross-entropy + w · CTC per label of
  the transcript against the encoder's frames through the tied token table; evaluation's
  is the cross-entropy alone."""
  import optax
  assert config.ctc_weight == 0.5  # the configuration's share; 0.3 below tells w from 1 - w
  config = config.copy_and_resolve_references()
  config.ctc_weight = 0.3
  task = tasks.create(config)
  assert task.ctc_weight == 0.3 and task.blank_id == task.tokenizer.to_hf().token_to_id(
      "<|startoflm|>")
  model = task.model()
  params = jax.jit(model.init)(jax.random.key(0), *task.init_inputs())["params"]
  batch = jax.tree.map(lambda *x: np.stack(x), *[task._encode(task.sources["train"][i])  # pylint: disable=protected-access
                                                 for i in range(2)])
  trained, _ = task.loss(model, params, batch, jax.random.key(0), deterministic=False)
  evaluated, sums = task.loss(model, params, batch, jax.random.key(0), deterministic=True)
  trained, evaluated = float(trained), float(evaluated)
  assert evaluated == pytest.approx(float(sums["loss"] / sums["count"]), rel=1e-5)
  encoded = model.apply({"params": params}, batch["features"], method=model.encode)
  frames = model.apply({"params": params}, encoded, method=model.token_logits)
  ctc = optax.ctc_loss(frames, np.zeros(frames.shape[:2]), batch["ctc_labels"],
                       batch["ctc_label_paddings"], blank_id=task.blank_id)
  per_label = float(np.mean(ctc / (1 - batch["ctc_label_paddings"]).sum(-1)))
  assert trained == pytest.approx(0.7 * evaluated + 0.3 * per_label, rel=1e-4)
  text = task.tokenizer.encode(" " + pipeline.as_text(task.sources["train"][0]["text"]))
  n = int((1 - batch["ctc_label_paddings"][0]).sum())
  assert batch["ctc_labels"][0, :n].tolist() == text[:n]
