"""Speech for the audio family. Waveforms are float32 in [-1, 1], mono, at the task's sample rate.

lite: `LiteSpeech`. Training: sentences synthesized by espeak-ng (several accents, voice variants,
  speaking rates and pitches). Eval: other sentences, spoken by other voice variants (train and
  eval share no sentence and no voice), plus the real two-speaker recording shipped with
  pyannote-audio, cut at its annotated speaker turns. Sentences come from a small seeded grammar
  so they vary in words, length and prosody (questions, lists, numbers).
full: `folder_utterances`: wav/flac files in the LibriTTS layout, <root>/<split>/<speaker>/<chapter>/
  *.wav; a file soundfile cannot read is skipped with a warning naming it.
Every file is resampled to the task rate with scipy.signal.resample_poly (polyphase, Kaiser window).
"""
from __future__ import annotations

import hashlib
import random
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile
import torch
from scipy.signal import resample_poly
from torch import Tensor

from vqbench.families import DataRootError, resolve_data_root
from vqbench.families.audio import espeak
from vqbench.families.audio.sources import REAL_SAMPLE
from vqbench.families.sources import fetch

AUDIO_EXTENSIONS = (".wav", ".flac")
ACCENTS = ("en-us", "en", "en-029", "en-gb-scotland", "en-gb-x-rp", "en-us-nyc")  # espeak voice names
TRAIN_VARIANTS = ("m1", "m2", "m3", "m5", "m6", "f1", "f2", "f3")
EVAL_VARIANTS = ("m4", "m7", "f4", "f5")  # never heard in training
RATES = (130, 160, 190)  # words per minute
PITCHES = (30, 50, 70)  # espeak pitch, 0-100


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out:
        return x.astype(np.float32)
    ratio = Fraction(rate_out, rate_in)
    return resample_poly(x.astype(np.float64), ratio.numerator, ratio.denominator).astype(np.float32)


def read_audio(path: Path, rate: int) -> np.ndarray:
    """Mono float32 at `rate` (channels averaged)."""
    x, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    return resample(x.mean(1), sr, rate)


def trim(x: np.ndarray, hop: int) -> np.ndarray:
    """Drop the tail that is not a whole token (< hop samples), so tokens and samples line up."""
    return x[: len(x) // hop * hop]


# ------------------------------------------------------------------ sentences (a seeded grammar)

_DET = ("the", "a", "every", "one", "that", "my", "her", "our")
_ADJ = ("quiet", "heavy", "bright", "narrow", "ancient", "purple", "curious", "frozen", "gentle", "noisy",
        "crooked", "silver", "tiny", "golden", "muddy", "patient", "bitter", "hollow")
_NOUN = ("river", "teacher", "lantern", "garden", "engine", "sailor", "window", "basket", "mountain", "violin",
         "kitchen", "dragon", "harbour", "pencil", "market", "blanket", "tower", "orchard", "whistle", "compass")
_VERB = ("carried", "painted", "followed", "measured", "dropped", "borrowed", "watched", "repaired", "pushed",
         "described", "forgot", "counted", "crossed", "lifted", "cleaned", "answered")
_ADV = ("slowly", "twice", "yesterday", "without a sound", "before dawn", "in the rain", "at noon", "by accident")
_PREP = ("near", "behind", "under", "beside", "across", "inside", "beyond", "around")


def sentence(rng: random.Random) -> str:
    """One sentence: a statement, a question, a list or one with a number, 5 to 20 words."""
    def np_(): return f"{rng.choice(_DET)} {rng.choice(_ADJ)} {rng.choice(_NOUN)}"
    kind = rng.randrange(5)
    if kind == 0:
        return f"{np_().capitalize()} {rng.choice(_VERB)} {np_()} {rng.choice(_PREP)} {np_()}."
    if kind == 1:
        return f"Why has {np_()} {rng.choice(_VERB)} {np_()} {rng.choice(_ADV)}?"
    if kind == 2:
        items = ", ".join(rng.sample(_NOUN, rng.randint(3, 5)))
        return f"We {rng.choice(_VERB)} {items} and {np_()}."
    if kind == 3:
        return f"{rng.randint(2, 1999)} {rng.choice(_NOUN)}s were {rng.choice(_VERB)} {rng.choice(_ADV)}."
    return f"{np_().capitalize()} {rng.choice(_VERB)} {np_()} {rng.choice(_ADV)}, then {np_()} " \
           f"{rng.choice(_VERB)} {np_()}."


def sentences(n: int, seed: int, exclude: set[str] = frozenset()) -> list[str]:
    """n distinct sentences not in `exclude`, the same for the same (n, seed, exclude)."""
    rng, out = random.Random(f"vqbench-audio-{seed}"), []
    while len(out) < n:
        s = sentence(rng)
        if s not in exclude and s not in out:
            out.append(s)
    return out


def corpus_items(n: int, seed: int, variants: Sequence[str], exclude: set[str] = frozenset()) -> list[dict]:
    """n espeak items: distinct sentences, each with a seeded accent, variant, rate and pitch."""
    rng = random.Random(f"vqbench-audio-voices-{seed}")
    return [{"text": text, "voice": f"{rng.choice(ACCENTS)}+{rng.choice(variants)}", "rate": rng.choice(RATES),
             "pitch": rng.choice(PITCHES)} for text in sentences(n, seed, exclude)]


def real_utterances(rate: int, min_seconds: float = 0.4) -> list[tuple[str, np.ndarray]]:
    """pyannote-audio's sample cut at its RTTM speaker turns (turns may overlap: real conversation)."""
    folder = fetch(REAL_SAMPLE)
    x = read_audio(folder / "sample.wav", rate)
    out = []
    for i, line in enumerate((folder / "sample.rttm").read_text().splitlines()):
        fields = line.split()
        start, duration, speaker = float(fields[3]), float(fields[4]), fields[7]
        if duration >= min_seconds:
            out.append((f"real/{i:02d}-{speaker}", x[round(start * rate): round((start + duration) * rate)]))
    return out


class LiteSpeech:
    """The lite corpus at `rate`: `train` (list of waveforms) and `eval` ([(id, waveform)], trimmed to
    whole tokens of `hop` samples). `content_key()` hashes every sample of both."""

    def __init__(self, rate: int, hop: int, train_utterances: int, eval_utterances: int, real: bool, seed: int = 0):
        items = self.items(train_utterances, eval_utterances, seed)
        train_items, eval_items = items[:train_utterances], items[train_utterances:]
        waves = espeak.render(items)  # one render: one fixed order
        self.rendered_hash = espeak.content_hash(waves)
        scale = 1 / 32768
        audio = [resample(w * scale, espeak.SAMPLE_RATE, rate) for w in waves]
        self.train = audio[:train_utterances]
        self.eval = [(f"espeak/{i:03d}-{item['voice']}", trim(a, hop))
                     for i, (item, a) in enumerate(zip(eval_items, audio[train_utterances:]))]
        if real:
            self.eval += [(k, trim(a, hop)) for k, a in real_utterances(rate)]
        self.eval = [(k, a) for k, a in self.eval if len(a)]

    @staticmethod
    def items(train_utterances: int, eval_utterances: int, seed: int = 0) -> list[dict]:
        """What is rendered, in render order: the training sentences, then the eval sentences (other
        sentences, other voice variants)."""
        train_items = corpus_items(train_utterances, seed, TRAIN_VARIANTS)
        eval_items = corpus_items(eval_utterances, seed + 1, EVAL_VARIANTS, exclude={i["text"] for i in train_items})
        return train_items + eval_items

    def content_key(self) -> str:
        h = hashlib.sha256()
        for x in self.train + [a for _, a in self.eval]:
            h.update(np.ascontiguousarray(x).tobytes())
        return h.hexdigest()[:16]


# ------------------------------------------------------------------ full tier: LibriTTS-style folder

HOW_TO_GET = ("download LibriTTS (https://www.openslr.org/60/, e.g. train-clean-100 and test-clean) and extract "
              "it so that <root>/<split>/<speaker>/<chapter>/*.wav")


def audio_files(root: Path, split: str, task_path=None) -> list[Path]:
    folder = root / split
    where = f"{task_path}: " if task_path else ""
    if not folder.is_dir():
        raise DataRootError(f"{where}field 'data.root': {folder} does not exist. Fix: {HOW_TO_GET}, and point "
                            f"`--data audio=<root>` or data.root at the folder holding {split}/")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise DataRootError(f"{where}field 'data.root': {folder} holds no {'/'.join(AUDIO_EXTENSIONS)} files. "
                            f"Fix: {HOW_TO_GET}")
    return files


def resolve_root(root: str | None, task_path=None) -> Path:
    return resolve_data_root("audio", root, task_path, HOW_TO_GET)


def folder_utterances(files: Sequence[Path], root: Path, rate: int, hop: int = 1,
                      max_seconds: float | None = None) -> list[tuple[str, np.ndarray]]:
    """(id = path under root, waveform) of every readable file; unreadable ones are skipped with a
    warning naming them (nothing else is lost). `max_seconds` keeps the first seconds of each."""
    out = []
    for path in files:
        try:
            x = read_audio(path, rate)
        except (soundfile.LibsndfileError, RuntimeError, ValueError, OSError) as e:
            warnings.warn(f"audio: skipping {path}: not a readable audio file ({e})", stacklevel=2)
            continue
        if max_seconds is not None:
            x = x[: int(max_seconds * rate)]
        x = trim(x, hop)
        if len(x):
            out.append((str(path.relative_to(root)), x))
    return out


def listing_key(files: Sequence[Path], root: Path, *extra) -> str:
    h = hashlib.sha256(repr(extra).encode())
    for p in files:
        h.update(f"{p.relative_to(root)}:{p.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------ batches

def random_crops(waves: Sequence[np.ndarray], n: int, length: int, gen: torch.Generator) -> Tensor:
    """(n, 1, length): a uniform utterance, a uniform offset; shorter utterances are looped (never padded
    with silence the eval set does not have)."""
    out = torch.empty(n, 1, length)
    for i in range(n):
        w = waves[int(torch.randint(len(waves), (1,), generator=gen))]
        if len(w) < length:
            w = np.tile(w, length // len(w) + 1)
        start = int(torch.randint(len(w) - length + 1, (1,), generator=gen))
        out[i, 0] = torch.from_numpy(np.ascontiguousarray(w[start:start + length]))
    return out
