"""Synthetic speech from espeak-ng (formant synthesis, https://github.com/espeak-ng/espeak-ng),
driven through its C API with ctypes: espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS) returns the
rate (22,050 Hz) and a callback collects the int16 samples of each espeak_Synth call.

Determinism, measured: espeak-ng keeps state between utterances inside one process (the same
sentence rendered twice in a row differs, even after srand and espeak_Terminate/Initialize),
but a fresh process rendering the same list in the same order gives the same bits every time.
So a corpus is always rendered whole, in a fixed order, by a fresh child process
(`python -m vqbench.families.audio.espeak`). Nothing promises the same bits on another CPU or
libc; the rendered corpus is therefore cached by the hash of its specification and the sources'
sha256 (`render`), and its own content hash names it wherever results depend on it.
"""
from __future__ import annotations

import ctypes
import hashlib
import io
import json
import os
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

SAMPLE_RATE = 22050  # what espeak_Initialize returns for synchronous output
_RATE, _PITCH = 1, 3  # espeak_PARAMETER: espeakRATE (words/min), espeakPITCH (0-100)


def data_folder(scratch: Path) -> Path:
    """espeak-ng's data layout (phoneme tables, lang/gmw/*, voices/!v/*) as links to the verified sources."""
    root = scratch / "espeak-ng-data"
    for sub, src in (("", PHONEMES), ("lang/gmw", ENGLISH), ("voices/!v", VARIANTS)):
        folder = root / sub
        folder.mkdir(parents=True, exist_ok=True)
        for member in src.members:
            (folder / member).symlink_to(fetch(src) / member)
    return root


def _synthesize(items: list[dict]) -> list[np.ndarray]:
    """In THIS process: int16 samples of each {"text", "voice", "rate", "pitch"}, in order."""
    lib = ctypes.CDLL(str(fetch(LIBRARY) / "libespeak-ng.so.1.52.0"))
    with tempfile.TemporaryDirectory(prefix="vqbench-espeak-") as tmp:
        rate = lib.espeak_Initialize(2, 0, str(data_folder(Path(tmp))).encode(), 0)
        if rate != SAMPLE_RATE:
            raise DataError(f"espeak-ng initialisation returned {rate}, expected {SAMPLE_RATE} Hz")
        chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

        def collect(wav, n, events):
            if wav and n > 0:
                chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
            return 0

        callback = callback_type(collect)  # kept alive until the last synth call
        lib.espeak_SetSynthCallback(callback)
        out = []
        for item in items:
            chunks.clear()
            if lib.espeak_SetVoiceByName(item["voice"].encode()) != 0:
                raise DataError(f"espeak-ng has no voice {item['voice']!r}")
            lib.espeak_SetParameter(_RATE, int(item["rate"]), 0)
            lib.espeak_SetParameter(_PITCH, int(item["pitch"]), 0)
            text = item["text"].encode()
            if lib.espeak_Synth(text, len(text) + 1, 0, 0, 0, 0, None, None) != 0:
                raise DataError(f"espeak-ng could not synthesize {item['text']!r}")
            lib.espeak_Synchronize()
            out.append(np.concatenate(chunks) if chunks else np.zeros(0, np.int16))
        lib.espeak_Terminate()
    return out


def spec_key(items: list[dict]) -> str:
    """Hash of what is rendered and with which verified files."""
    digests = [d for src in ESPEAK_SOURCES for d in sorted(src.members.values())]
    return hashlib.sha256(json.dumps([items, digests], sort_keys=True).encode()).hexdigest()[:16]


def render(items: list[dict]) -> list[np.ndarray]:
    """int16 samples at SAMPLE_RATE of every item, rendered whole by a fresh process (see the module
    docstring), read from the cache when this specification was rendered before. The cache write is
    skipped where the cache is read-only (a confined job stage): it renders again, identically."""
    path = cache_home() / "audio" / f"espeak-{spec_key(items)}.npz"
    data = read_verified(path)
    if data is None:
        proc = subprocess.run([sys.executable, "-m", "vqbench.families.audio.espeak"], input=json.dumps(items).encode(),
                              capture_output=True, timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "1"})
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


if __name__ == "__main__":  # the fresh renderer process: JSON items on stdin, an .npz on stdout
    waves = _synthesize(json.loads(sys.stdin.buffer.read()))
    buf = io.BytesIO()
    np.savez(buf, **{f"a{i}": w for i, w in enumerate(waves)})
    sys.stdout.buffer.write(buf.getvalue())
