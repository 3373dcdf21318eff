"""Speech recognition from scratch: a small Whisper-shaped model on kjv_speech (KJV verses
spoken by espeak-ng, flite and festival voices).

    python -m experiments.train --config=configs/whisper_kjv_speech.py --workdir=runs/asr
    python -m experiments.eval --workdir=runs/asr --split=test_held_out_voice

Needs `apt-get install sword-text-kjv espeak-ng flite festival festvox-kallpc16k
festvox-us-slt-hts` (install.sh). The audio is cut or padded to `dataset.max_seconds`
(log-mel features, Whisper's front end), a BPE vocabulary is trained on the training
transcripts and saved in the workdir, and evaluation reports token loss and accuracy and the
WER/CER of greedy transcripts after Whisper's English normalisation. Variants: (none) a
4+2-layer width-192 model sized for a 2-core CPU, "tiny" for tests (on kjv_speech_tiny),
"memorise" for the notebook (a small model learns kjv_speech_tiny's 12 training verses).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.task = "asr"
  c.dataset.name = "kjv_speech"
  c.dataset.max_seconds = 6.5  # the encoder's window: 650 frames, 325 positions (the longest verse)
  c.dataset.seq_len = 96  # decoder tokens: the prompt, the transcript (at most 85), the end
  # A small BPE (300 byte-level tokens: the bytes and ~40 merges such as " the", " and"):
  # units close to letters are heard in many verses each, which is what 4,577 verses allow
  c.dataset.vocab_size = 300
  c.dataset.language = "en"  # the prompt's language token, for a Whisper tokenizer
  c.model.preset = "whisper-tiny"  # the family; the fields below set its size (2-core CPU)
  c.model.width = 192
  c.model.depth = 4  # encoder blocks
  c.model.decoder_depth = 2
  c.model.num_heads = 4
  c.model.mlp_dim = 768
  c.model.dropout_rate = 0.0
  c.model.kernel = "auto"
  # Hybrid CTC/attention training: this share of the loss is CTC on the encoder's output
  # (through the tied token table), which makes the cross-attention align early.
  c.ctc_weight = 0.5
  c.batch_size = 16
  c.num_train_steps = 4000
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 250
  c.eval_wer_examples = 91  # transcribed at each evaluation: the whole validation split
  c.optimizer.lr = 2e-3
  c.optimizer.warmup_steps = 200
  c.optimizer.weight_decay = 0.01

  if arg == "tiny":
    common.make_tiny(c)
    c.dataset.name = "kjv_speech_tiny"
    c.dataset.max_seconds = 2.0
    c.dataset.seq_len = 24
    c.dataset.vocab_size = 300
    c.model.width, c.model.depth, c.model.decoder_depth = 32, 1, 1
    c.model.num_heads, c.model.mlp_dim = 4, 64
    c.eval_wer_examples = 4
  elif arg == "memorise":  # the notebook's: learn kjv_speech_tiny's 12 training verses by heart
    c.dataset.name = "kjv_speech_tiny"
    c.dataset.eval_split = "train"
    c.dataset.vocab_size = 300
    c.dataset.seq_len = 48
    c.model.width, c.model.depth, c.model.decoder_depth = 96, 2, 2
    c.model.num_heads, c.model.mlp_dim = 4, 256
    c.batch_size = 8
    c.num_train_steps = 200
    c.log_every_steps = 50
    c.eval_every_steps = c.checkpoint_every_steps = 200
    c.eval_wer_examples = 12
    c.optimizer.lr = 3e-3
    c.optimizer.warmup_steps = 30
    c.ctc_weight = 0.0  # learning twelve verses by heart needs no help to align
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r}; valid: tiny, memorise (or none).")
  return c
