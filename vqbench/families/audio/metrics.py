"""Speech fidelity metrics, each scored per utterance on (reference x, reconstruction x_hat) and
averaged over utterances (Codec-SUPERB and SimVQ report utterance means):

- si_sdr: scale-invariant SDR in dB (Le Roux et al. 2019), torchmetrics.
- pesq: wideband PESQ, ITU-T P.862.2, the `pesq` package (input resampled to 16 kHz if needed).
- stoi: short-time objective intelligibility (Taal et al. 2011), `pystoi`.
- mel_distance: mean |log10 mel - log10 mel_hat| (80 Slaney mel bands, window 64 ms).
- stft_distance: multi-resolution STFT distance (Parallel WaveGAN's loss, model.stft_distance).
- f0_rmse, vuv_f1: F0 from WORLD's DIO + StoneMask (Morise et al. 2016, `pyworld`, no weights):
  RMSE in Hz over frames voiced in both, F1 of voicing with the reference's as truth.
- bitrate_kbps: tokens/s x log2(K) / 1000, the rate the task grants the token stream.
- utmos: listed, never computed: no registry package ships UTMOS weights (utmos-pytorch 0.1.0 is
  an 18 KB wheel of code; speechmos 0.0.1.1 ships DNSMOS/PLCMOS/AECMOS ONNX models, not UTMOS).

A metric that fails on one utterance (PESQ finds no speech in it, F0 finds no voiced frame in both)
records that utterance as missing with the reason, in `MetricContext.shared["audio_missing"]`, and
averages the rest; `missing_items` reports their number and each reason is printed as a warning.
A metric that scores no utterance at all is unavailable with the first reason, never a number.
"""
from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vqbench.families.audio.data import resample
from vqbench.families.audio.model import LogMel, stft_distance
from vqbench.families import EvalBatch
from vqbench.metrics import MetricContext, MetricUnavailable, Unavailable, register_metric

UTMOS_REASON = ("no package on the index ships UTMOS weights: utmos-pytorch 0.1.0 is code only (an 18 KB wheel), "
                "speechmos 0.0.1.1 ships DNSMOS/PLCMOS/AECMOS models, not UTMOS")


def si_sdr(ref: np.ndarray, deg: np.ndarray, rate: int) -> float:
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio
    return float(scale_invariant_signal_distortion_ratio(torch.from_numpy(deg).double(), torch.from_numpy(ref).double()))


def pesq_wb(ref: np.ndarray, deg: np.ndarray, rate: int) -> float:
    from pesq import pesq
    return float(pesq(16000, resample(ref, rate, 16000), resample(deg, rate, 16000), "wb"))


def stoi(ref: np.ndarray, deg: np.ndarray, rate: int) -> float:
    from pystoi import stoi as _stoi
    return float(_stoi(ref.astype(np.float64), deg.astype(np.float64), rate, extended=False))


_MELS: dict[int, LogMel] = {}


def mel_distance(ref: np.ndarray, deg: np.ndarray, rate: int) -> float:
    mel = _MELS.setdefault(rate, LogMel(rate))
    a, b = torch.from_numpy(ref)[None], torch.from_numpy(deg)[None]
    return float((mel(a) - mel(b)).abs().mean())


def stft(ref: np.ndarray, deg: np.ndarray, rate: int) -> float:
    if len(ref) < 2048:
        raise ValueError(f"{len(ref)} samples are shorter than the largest STFT window (2048)")
    return float(stft_distance(torch.from_numpy(deg)[None], torch.from_numpy(ref)[None]))


@functools.cache
def world():
    """pyworld's compiled module. pyworld 0.3.5's __init__ imports pkg_resources, which setuptools
    >= 81 no longer ships; where that import fails the extension module is loaded from its file."""
    try:
        import pyworld
        return pyworld
    except ModuleNotFoundError as e:
        if e.name != "pkg_resources":
            raise
    import importlib.machinery
    import importlib.util
    spec = importlib.util.find_spec("pyworld")
    folder = Path(spec.submodule_search_locations[0])
    for path in sorted(folder.glob("pyworld*.so")) + sorted(folder.glob("pyworld*.pyd")):
        ext = importlib.util.spec_from_file_location("pyworld", path,
                                                     loader=importlib.machinery.ExtensionFileLoader("pyworld", str(path)))
        module = importlib.util.module_from_spec(ext)
        ext.loader.exec_module(module)
        return module
    raise ModuleNotFoundError(f"pyworld's compiled module is not in {folder}")


def f0(x: np.ndarray, rate: int) -> np.ndarray:
    """WORLD F0 (Hz, 0 = unvoiced) every 10 ms: DIO, refined by StoneMask."""
    pyworld = world()
    x = x.astype(np.float64)
    coarse, times = pyworld.dio(x, rate, frame_period=10.0)
    return pyworld.stonemask(x, coarse, times, rate)


def f0_pair(ref: np.ndarray, deg: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = f0(ref, rate), f0(deg, rate)
    n = min(len(a), len(b))
    return a[:n], b[:n]


def f0_rmse(ref: np.ndarray, deg: np.ndarray, rate: int) -> float:
    a, b = f0_pair(ref, deg, rate)
    both = (a > 0) & (b > 0)
    if not both.any():
        raise ValueError("no frame is voiced in both the reference and the reconstruction")
    return float(np.sqrt(np.mean((a[both] - b[both]) ** 2)))


def vuv_f1(ref: np.ndarray, deg: np.ndarray, rate: int) -> float:
    a, b = f0_pair(ref, deg, rate)
    truth, guess = a > 0, b > 0
    if not truth.any():
        raise ValueError("the reference has no voiced frame")
    tp = float((truth & guess).sum())
    return 2 * tp / (truth.sum() + guess.sum())


class PerItem:
    """Scores each eval utterance with fn(ref, deg, rate) -> float; compute() is the mean over the
    utterances it could score. Failures are recorded per utterance (see the module docstring)."""

    def __init__(self, name: str, fn, rate: int, missing: dict):
        self.name, self.fn, self.rate = name, fn, rate
        self.missing = missing.setdefault(name, {})
        self.reset()

    def reset(self) -> None:
        self.scores: list[float] = []
        self.missing.clear()

    def update(self, b: EvalBatch) -> None:
        ids = b.batch.ids or [f"item{len(self.scores) + len(self.missing) + i}" for i in range(len(b.x_hat))]
        for item, deg, ref in zip(ids, b.x_hat.detach().float().cpu().flatten(1).numpy(),
                                  b.batch.x.float().cpu().flatten(1).numpy()):
            try:
                value = self.fn(np.ascontiguousarray(ref), np.ascontiguousarray(deg), self.rate)
                if not math.isfinite(value):
                    raise ValueError(f"non-finite value {value}")
                self.scores.append(value)
            except Exception as e:  # pesq raises its own error classes; any failure is that item's
                self.missing[item] = f"{type(e).__name__}: {e}"
                warnings.warn(f"audio metric {self.name}: {item} not scored ({self.missing[item]})", stacklevel=2)

    def compute(self) -> float:
        if not self.scores:
            first = next(iter(self.missing.items()), ("", "no eval utterance"))
            raise MetricUnavailable(f"{self.name} scored no utterance; {len(self.missing)} failed, e.g. "
                                    f"{first[0]}: {first[1]}")
        return float(np.mean(self.scores))


class MissingItems:
    """(metric, utterance) pairs the other audio metrics could not score (list it last in a task)."""

    def __init__(self, missing: dict):
        self.missing = missing

    def update(self, b: EvalBatch) -> None:
        pass

    def reset(self) -> None:
        pass

    def compute(self) -> float:
        return float(sum(len(v) for v in self.missing.values()))


class Bitrate:
    def __init__(self, tokens_per_second: float, codebook_size: int):
        self.kbps = tokens_per_second * math.log2(codebook_size) / 1000

    def update(self, b: EvalBatch) -> None:
        pass

    def reset(self) -> None:
        pass

    def compute(self) -> float:
        return self.kbps


def per_item(name: str, fn):
    def make(ctx: MetricContext):
        return PerItem(name, fn, ctx.context["sample_rate"], ctx.shared.setdefault("audio_missing", {}))
    return make


_PER_ITEM = {
    "si_sdr": (si_sdr, True, "scale-invariant signal-to-distortion ratio, mean over utterances", ".2f", "dB"),
    "pesq": (pesq_wb, True, "wideband PESQ (ITU-T P.862.2, `pesq` package, at 16 kHz), mean over utterances",
             ".3f", "MOS-LQO"),
    "stoi": (stoi, True, "short-time objective intelligibility (`pystoi`), mean over utterances", ".3f", ""),
    "mel_distance": (mel_distance, False, "mean |log10 mel - log10 mel_hat| (80 Slaney bands), mean over "
                     "utterances", ".3f", ""),
    "stft_distance": (stft, False, "multi-resolution STFT distance (spectral convergence + log magnitude L1 at "
                      "FFT 512/1024/2048), mean over utterances", ".3f", ""),
    "f0_rmse": (f0_rmse, False, "F0 RMSE over frames voiced in both (WORLD DIO + StoneMask), mean over "
                "utterances", ".1f", "Hz"),
    "vuv_f1": (vuv_f1, True, "F1 of voiced/unvoiced frames, reference voicing as truth (WORLD DIO), mean over "
               "utterances", ".3f", ""),
}
for _name, (_fn, _higher, _doc, _fmt, _unit) in _PER_ITEM.items():
    register_metric(_name, _higher, _doc, _fmt, unit=_unit, factory=per_item(_name, _fn), inputs="eval")

register_metric("bitrate_kbps", False, "token rate x log2(K): tokens per second x bits per token / 1000", ".2f",
                label="bitrate", unit="kbps", inputs="eval",
                factory=lambda ctx: Bitrate(ctx.context["tokens_per_second"], ctx.task.quantizer.codebook_size))
register_metric("missing_items", False, "(metric, utterance) pairs an audio metric could not score (reasons are "
                "printed as warnings)", ".0f", label="missing", inputs="eval",
                factory=lambda ctx: MissingItems(ctx.shared.setdefault("audio_missing", {})))
register_metric("utmos", True, "UTMOS predicted MOS (SimVQ's naturalness score): unavailable, see reason", ".3f",
                inputs="eval", factory=lambda ctx: Unavailable(UTMOS_REASON))
AUDIO_METRICS = (*_PER_ITEM, "bitrate_kbps", "utmos", "missing_items")
