"""The espeak-ng renderer process (see espeak.py for why a corpus is rendered by a fresh process).

Run as a script, not imported: it needs only ctypes and numpy, so it starts in a fraction of a
second. argv: the shared library, the espeak-ng data folder; stdin: JSON list of
{"text", "voice", "rate", "pitch"}; stdout: an .npz of int16 arrays a0, a1, ... at 22,050 Hz.
"""
import ctypes
import io
import json
import sys

import numpy as np

SAMPLE_RATE = 22050  # what espeak_Initialize returns for synchronous output
_SYNCHRONOUS, _RATE, _PITCH = 2, 1, 3  # espeak_AUDIO_OUTPUT, espeak_PARAMETER: espeakRATE, espeakPITCH


def synthesize(library: str, data_folder: str, items: list) -> list:
    lib = ctypes.CDLL(library)
    rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, data_folder.encode(), 0)
    if rate != SAMPLE_RATE:
        raise SystemExit(f"espeak-ng initialisation returned {rate}, expected {SAMPLE_RATE} Hz")
    chunks = []
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def collect(wav, n, events):
        if wav and n > 0:
            chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        return 0

    callback = callback_type(collect)  # referenced until the last synth call
    lib.espeak_SetSynthCallback(callback)
    libc = ctypes.CDLL(None)
    out = []
    for item in items:
        chunks.clear()
        # breath noise draws random numbers and espeak-ng seeds its generator from the clock at
        # initialisation: fix both generators (its own and libc's rand) before every utterance
        lib.espeak_ng_SetRandSeed(ctypes.c_long(1))
        libc.srand(1)
        if lib.espeak_SetVoiceByName(item["voice"].encode()) != 0:
            raise SystemExit(f"espeak-ng has no voice {item['voice']!r}")
        lib.espeak_SetParameter(_RATE, int(item["rate"]), 0)
        lib.espeak_SetParameter(_PITCH, int(item["pitch"]), 0)
        text = item["text"].encode()
        if lib.espeak_Synth(text, len(text) + 1, 0, 0, 0, 0, None, None) != 0:
            raise SystemExit(f"espeak-ng could not synthesize {item['text']!r}")
        lib.espeak_Synchronize()
        out.append(np.concatenate(chunks) if chunks else np.zeros(0, np.int16))
    lib.espeak_Terminate()
    return out


if __name__ == "__main__":
    waves = synthesize(sys.argv[1], sys.argv[2], json.loads(sys.stdin.buffer.read()))
    buf = io.BytesIO()
    np.savez(buf, **{f"a{i}": w for i, w in enumerate(waves)})
    sys.stdout.buffer.write(buf.getvalue())
