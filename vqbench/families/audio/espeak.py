"""Synthetic speech from espeak-ng (formant synthesis, https://github.com/espeak-ng/espeak-ng),
driven through its C API with ctypes: espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS) returns the
rate (22,050 Hz) and a callback collects the int16 samples of each espeak_Synth call.

Determinism, measured: espeak-ng seeds its random generator (breath noise of voice variants
such as f2) from the clock at initialisation, and keeps other state between utterances (the same
sentence rendered twice in a row differs). So the renderer fixes the generators before every
utterance (espeak_ng_SetRandSeed and libc srand) and a corpus is always rendered whole, in a fixed
order, by a fresh child process (espeak_child.py): that gives the same
bits on every run here (tests). Nothing promises the same bits on another CPU or libc, so the
rendered corpus is cached by the hash of its specification, the sources' sha256 and RENDERER
(`render`), and the corpus's own content hash names it wherever results depend on it.
"""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from vqbench.cache import read_verified, write_verified
from vqbench.families import DataError
from vqbench.families.audio.sources import ENGLISH, ESPEAK_SOURCES, LIBRARY, PHONEMES, VARIANTS
from vqbench.families.sources import fetch
from vqbench.paths import cache_home

CHILD = Path(__file__).with_name("espeak_child.py")  # the renderer process's script (ctypes + numpy only)
SAMPLE_RATE = 22050  # what espeak_Initialize returns for synchronous output
RENDERER = 2  # bump when rendering changes its output (2: fixed random seeds per utterance)


def data_folder(scratch: Path) -> Path:
    """espeak-ng's data layout (phoneme tables, lang/gmw/*, voices/!v/*) as links to the verified sources."""
    root = scratch / "espeak-ng-data"
    for sub, src in (("", PHONEMES), ("lang/gmw", ENGLISH), ("voices/!v", VARIANTS)):
        folder = root / sub
        folder.mkdir(parents=True, exist_ok=True)
        for member in src.members:
            (folder / member).symlink_to(fetch(src) / member)
    return root


def spec_key(items: list[dict]) -> str:
    """Hash of what is rendered and with which verified files."""
    digests = [d for src in ESPEAK_SOURCES for d in sorted(src.members.values())]
    return hashlib.sha256(json.dumps([RENDERER, items, digests], sort_keys=True).encode()).hexdigest()[:16]


def render(items: list[dict]) -> list[np.ndarray]:
    """int16 samples at SAMPLE_RATE of every item, rendered whole by a fresh process (see the module
    docstring), read from the cache when this specification was rendered before. The cache write is
    skipped where the cache is read-only (a confined job stage): it renders again, identically."""
    path = cache_home() / "audio" / f"espeak-{spec_key(items)}.npz"
    data = read_verified(path)
    if data is None:
        with tempfile.TemporaryDirectory(prefix="vqbench-espeak-") as tmp:
            proc = subprocess.run([sys.executable, "-I", str(CHILD), str(fetch(LIBRARY) / "libespeak-ng.so.1.52.0"),
                                   str(data_folder(Path(tmp)))], input=json.dumps(items).encode(),
                                  capture_output=True, timeout=1800)
        if proc.returncode != 0:
            last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
            raise DataError(f"espeak-ng synthesis failed: {last}. Fix: `vqbench data fetch` the espeak-ng sources")
        data = proc.stdout
        try:
            write_verified(path, data)
        except OSError:
            pass
    with np.load(io.BytesIO(data)) as z:
        return [z[f"a{i}"] for i in range(len(items))]


def content_hash(waves: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for w in waves:
        h.update(np.ascontiguousarray(w, dtype="<i2").tobytes())
    return h.hexdigest()[:16]
