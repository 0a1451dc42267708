"""Audio reconstruction: a speech tokenizer (1-D conv waveform codec) around the quantizer.

lite: 16 kHz, 50 tokens/s (hop 320). Trained on espeak-ng sentences; evaluated on other
  sentences by other voices plus real recorded speech (pyannote-audio's sample); one CPU job in
  minutes. full: LibriTTS (or any folder in its layout) at 24 kHz, SimVQ's audio setting.

Primary metric: mel_distance. It is defined on every utterance (PESQ can refuse one without
speech, F0 metrics one without voicing), moves smoothly with the codebook's coverage, and is the
distance Codec-SUPERB ranks codecs by; PESQ, STOI and SI-SDR are reported beside it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from vqbench.families import Batch, Family, Setup, batches_by_length, endless, register_family, to_device
from vqbench.families.audio import espeak
from vqbench.families.audio.data import (LiteSpeech, audio_files, folder_utterances, listing_key, random_crops,
                                         resolve_root)
from vqbench.families.audio.metrics import AUDIO_METRICS
from vqbench.families.audio.model import CodecLoss, Decoder, Encoder
from vqbench.families.audio.sources import SOURCES
from vqbench.schema import ConfigError


@dataclass
class Data:
    source: Literal["espeak", "folder"] = "espeak"  # espeak: bundled lite corpus; folder: LibriTTS layout
    sample_rate: int = 16000  # Hz; every file is resampled to it
    crop_seconds: float = 1.0  # length of a training crop
    eval_batch_seconds: float = 32.0  # audio per eval batch (memory only; numbers do not depend on it)
    # espeak only
    train_utterances: int = 400  # synthesized training sentences
    eval_utterances: int = 32  # synthesized eval sentences (other sentences, other voices)
    real_eval: bool = True  # add the real recorded speech (pyannote-audio sample, cut at speaker turns)
    corpus_seed: int = 0  # fixes the sentences and voices; shared by all seeds
    # folder only
    root: str | None = None  # holds <train_split>/ and <eval_split>/; `--data audio=PATH` wins
    train_split: str = "train-clean-100"  # subfolder with training speech (speaker/chapter/*.wav)
    eval_split: str = "test-clean"  # subfolder with eval speech
    eval_size: int | None = None  # first N eval files in sorted path order; None = all
    max_train_files: int | None = None  # first N training files (sorted); None = all (held in memory)
    max_eval_seconds: float | None = None  # keep the first seconds of each eval file; None = whole

    def validate(self) -> None:
        if self.sample_rate < 8000:
            raise ConfigError(None, "sample_rate", f"{self.sample_rate} < 8000", "give e.g. 16000 or 24000")
        if self.crop_seconds <= 0 or self.eval_batch_seconds <= 0:
            raise ConfigError(None, "crop_seconds", "crop_seconds and eval_batch_seconds must be > 0", "give e.g. 1.0")
        if self.source == "espeak" and (self.train_utterances < 1 or self.eval_utterances < 0):
            raise ConfigError(None, "train_utterances", "need >= 1 training and >= 0 eval utterances",
                              "give e.g. 400 and 32")


@dataclass
class Model:
    channels: int = 16  # width of the first conv; doubled at every stride
    strides: list[int] = field(default_factory=lambda: [2, 4, 5, 8])  # hop = product: 320 -> 50 tokens/s at 16 kHz
    full_rate_units: bool = True  # residual units at the sample rate (before the first stride, after the last); False: the first stride is a patchify conv
    l1_weight: float = 1.0  # waveform L1 term
    stft_weight: float = 1.0  # multi-resolution STFT term
    mel_weight: float = 1.0  # log-mel L1 term
    gan_weight: float = 0.0  # multi-scale waveform discriminator (hinge); full tier option
    gan_start: int = 0  # steps before the discriminator switches on
    disc_lr: float = 1.0e-4  # discriminator Adam learning rate

    def validate(self) -> None:
        if not self.strides or min(self.strides) < 1:
            raise ConfigError(None, "strides", f"{self.strides} is not a list of positive ints", "give e.g. [2, 4, 5, 8]")
        for name in ("l1_weight", "stft_weight", "mel_weight", "gan_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(None, name, f"{getattr(self, name)} < 0", f"give {name} >= 0")


def tokens_per_second(task) -> float:
    return task.data.sample_rate / math.prod(task.model.strides)


@register_family("audio")
class Audio(Family):
    Data = Data
    Model = Model
    metrics = AUDIO_METRICS
    primary_metric = "mel_distance"  # see the module docstring
    sources = SOURCES
    takes_data_root = True

    @classmethod
    def check(cls, task) -> None:
        hop = math.prod(task.model.strides)
        crop = task.data.crop_seconds * task.data.sample_rate
        if crop % hop or crop < 2048:
            raise ConfigError(task.path, "data.crop_seconds", f"{task.data.crop_seconds} s = {crop:g} samples is not "
                              f"a multiple of the hop {hop} of at least 2048 samples", f"give a multiple of {hop} samples")
        if "missing_items" in task.metrics and task.metrics[-1] != "missing_items":
            raise ConfigError(task.path, "metrics", "missing_items counts what the others could not score",
                              "list missing_items last")

    @classmethod
    def prepare(cls, task) -> None:
        """Render the espeak-ng corpus into the cache (harness code, before the confined stages, which
        can only read it), so no job stage renders it again. Folder data needs nothing: it is read and
        resampled in memory."""
        if task.data.source == "espeak":
            data = task.data
            espeak.render(LiteSpeech.items(data.train_utterances, data.eval_utterances, data.corpus_seed))

    @classmethod
    def build(cls, task, seed: int, device: torch.device) -> Setup:
        data, model, dim = task.data, task.model, task.quantizer.dim
        device = torch.device(device)
        hop = math.prod(model.strides)
        if data.source == "espeak":
            speech = LiteSpeech(data.sample_rate, hop, data.train_utterances, data.eval_utterances, data.real_eval,
                                data.corpus_seed)
            train, items, data_key = speech.train, speech.eval, f"espeak-{speech.content_key()}"
        else:
            root = resolve_root(data.root, task.path)
            train_files = audio_files(root, data.train_split, task.path)[:data.max_train_files]
            eval_files = audio_files(root, data.eval_split, task.path)[:data.eval_size]
            train = [x for _, x in folder_utterances(train_files, root, data.sample_rate)]
            items = folder_utterances(eval_files, root, data.sample_rate, hop, data.max_eval_seconds)
            data_key = f"folder-{listing_key(eval_files, root, data.sample_rate)}"
            if not train or not items:
                raise ConfigError(task.path, "data.root", f"no readable audio in {root}", "see the warnings above")
        crop = round(data.crop_seconds * data.sample_rate)
        batch = task.train.batch_size
        train_batches = to_device(endless(lambda g: random_crops(train, batch, crop, g), seed), device)
        # items of one exact length share a batch; a token never covers padding
        eval_set = batches_by_length([(k, torch.from_numpy(np.ascontiguousarray(x))[None]) for k, x in items],
                                     round(data.eval_batch_seconds * data.sample_rate), length_dim=1)

        def eval_batches():
            return (Batch(b.x.to(device), b.ids, b.side) for b in eval_set)

        loss = CodecLoss(data.sample_rate, model.l1_weight, model.stft_weight, model.mel_weight, model.gan_weight,
                         model.gan_start, model.disc_lr).to(device)
        return Setup(
            encoder=Encoder(dim, model.channels, model.strides, full_rate_units=model.full_rate_units).to(device),
            decoder=Decoder(dim, model.channels, model.strides, full_rate_units=model.full_rate_units).to(device),
            train_batches=train_batches,
            eval_batches=eval_batches,
            reconstruction_loss=loss,
            metric_context={"sample_rate": data.sample_rate, "tokens_per_second": tokens_per_second(task),
                            "data_key": data_key},
        )
