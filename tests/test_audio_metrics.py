"""Audio metrics: identical signals score perfectly, noise lowers every score monotonically, PESQ and
STOI equal the reference packages on a known pair, per-item failures are recorded, bitrate arithmetic,
and no padding reaches a code count."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from vqbench.families import Batch, EvalBatch, batches_by_length
from vqbench.families.audio import metrics as am
from vqbench.families.audio.model import Decoder, Encoder, mel_filterbank
from vqbench.metrics import METRICS, MetricContext, MetricUnavailable, build_metrics
from vqbench.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RATE = 16000
PER_ITEM = ("si_sdr", "pesq", "stoi", "mel_distance", "stft_distance", "f0_rmse", "vuv_f1")


def speechlike(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """Voiced segments (harmonics of a gliding F0, formant-like amplitudes) separated by silences and
    noise bursts: enough structure for PESQ, STOI and F0 to behave as on speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voiced = sum(np.sin(k * phase) / k * (1 + np.cos(2 * np.pi * k * f0 / 800)) for k in range(1, 25))
    gate = (np.sin(2 * np.pi * 1.5 * t) > -0.3).astype(float)
    x = 0.1 * voiced * gate + 0.01 * rng.standard_normal(len(t)) * (1 - gate)
    return x.astype(np.float32)


def scores(ref: np.ndarray, deg: np.ndarray) -> dict[str, float]:
    return {name: fn(ref, deg, RATE) for name, (fn, *_ ) in am._PER_ITEM.items()}


def test_registered_with_direction_doc_and_unit():
    for name in (*PER_ITEM, "bitrate_kbps", "utmos", "missing_items"):
        spec = METRICS[name]
        assert spec.doc and spec.inputs == "eval"
    assert METRICS["pesq"].higher_is_better and not METRICS["mel_distance"].higher_is_better
    assert METRICS["si_sdr"].unit == "dB" and METRICS["bitrate_kbps"].unit == "kbps" and METRICS["f0_rmse"].unit == "Hz"


def test_identical_signals_score_perfectly():
    x = speechlike()
    s = scores(x, x.copy())
    assert s["si_sdr"] > 100 and s["pesq"] > 4.5 and s["stoi"] > 0.999
    assert s["mel_distance"] == 0 and s["stft_distance"] == 0 and s["f0_rmse"] == 0 and s["vuv_f1"] == 1


def test_noise_lowers_every_score_monotonically():
    x = speechlike()
    noise = np.random.default_rng(1).standard_normal(len(x)).astype(np.float32) * np.abs(x).max()
    levels = [scores(x, x + a * noise) for a in (0.003, 0.03, 0.3)]
    for name in PER_ITEM:
        values = [lv[name] for lv in levels]
        if METRICS[name].higher_is_better:
            assert values[0] > values[1] > values[2], (name, values)
        else:
            assert values[0] < values[1] < values[2], (name, values)


def test_pesq_and_stoi_equal_the_reference_packages():
    from pesq import pesq
    from pystoi import stoi
    from scipy.signal import resample_poly

    x = speechlike(seed=2)
    y = x + 0.02 * np.random.default_rng(3).standard_normal(len(x)).astype(np.float32)
    assert am.pesq_wb(x, y, RATE) == pesq(RATE, x, y, "wb")
    assert am.stoi(x, y, RATE) == stoi(x.astype(np.float64), y.astype(np.float64), RATE)
    x24, y24 = (resample_poly(v.astype(np.float64), 3, 2).astype(np.float32) for v in (x, y))  # a 24 kHz pair
    assert math.isclose(am.pesq_wb(x24, y24, 24000), pesq(RATE, x, y, "wb"), abs_tol=0.05)


def test_mel_filterbank_matches_slaney_definition():
    fb = mel_filterbank(16000, 1024, 80)
    assert fb.shape == (80, 513) and (fb >= 0).all()
    assert (fb.sum(1) > 0).all()  # no empty band
    peaks = fb.argmax(1)
    assert (peaks[1:] >= peaks[:-1]).all()  # bands rise with frequency


def eval_batch(xs: list[np.ndarray], ids: list[str]) -> EvalBatch:
    x = torch.from_numpy(np.stack(xs))[:, None]
    return EvalBatch(Batch(x, ids), x.clone(), None, None, None, None)


def test_a_failing_item_is_missing_with_its_reason_not_a_number():
    task = get_task("audio/lite@codebook_size=1024")
    ctx = MetricContext(task, torch.device("cpu"), {"sample_rate": RATE, "tokens_per_second": 50.0})
    ms = build_metrics(task.metrics, ctx)
    silent = np.zeros(RATE, np.float32)
    with pytest.warns(UserWarning, match="silent-one not scored"):
        for m in ms.values():
            m.update(eval_batch([speechlike(1.0)], ["speech-one"]))
            m.update(eval_batch([silent], ["silent-one"]))
    assert "silent-one" in ctx.shared["audio_missing"]["vuv_f1"]  # no voiced reference frame
    assert "speech-one" not in ctx.shared["audio_missing"]["vuv_f1"]
    assert ms["vuv_f1"].compute() == 1.0  # the mean over the items it could score
    assert ms["missing_items"].compute() == sum(len(v) for v in ctx.shared["audio_missing"].values()) > 0
    with pytest.raises(MetricUnavailable, match="UTMOS"):
        ms["utmos"].compute()
    only_silent = am.PerItem("f0_rmse", am.f0_rmse, RATE, {})
    with pytest.warns(UserWarning):
        only_silent.update(eval_batch([silent], ["s"]))
    with pytest.raises(MetricUnavailable, match="scored no utterance.*no frame is voiced"):
        only_silent.compute()


@pytest.mark.parametrize("k,kbps", [(1024, 0.5), (4096, 0.6), (65536, 0.8)])
def test_bitrate_arithmetic(k, kbps):
    task = get_task(f"audio/lite@codebook_size={1024 if k == 65536 else k}")
    task = dataclasses.replace(task, quantizer=dataclasses.replace(task.quantizer, codebook_size=k))
    ctx = MetricContext(task, torch.device("cpu"), {"sample_rate": RATE, "tokens_per_second": 50.0})
    assert math.isclose(METRICS["bitrate_kbps"].factory(ctx).compute(), kbps)  # 50 tokens/s x log2 K bits
    full = get_task("audio/libritts@codebook_size=262144")
    from vqbench.families.audio import tokens_per_second
    assert tokens_per_second(full) == 75 and math.isclose(75 * 18 / 1000, 1.35)


def test_no_padding_token_is_quantized_or_counted():
    """Eval batches hold utterances of one exact length; every token the encoder makes covers real
    samples, so the codes a metric counts are len / hop per utterance, no more."""
    hop, lengths = 320, [3 * 320, 5 * 320, 3 * 320, 7 * 320]
    items = [(f"u{i}", torch.randn(1, n)) for i, n in enumerate(lengths)]
    batches = batches_by_length(items, max_tokens=10 * 320, length_dim=1)
    enc, dec = Encoder(4, 4, [2, 4, 5, 8]), Decoder(4, 4, [2, 4, 5, 8])
    tokens = 0
    for b in batches:
        assert len({x.shape[-1] for x in b.x}) == 1
        z = enc(b.x)
        assert z.shape[1] * hop == b.x.shape[-1] and dec(z).shape == b.x.shape
        tokens += z.shape[0] * z.shape[1]
    assert tokens == sum(lengths) // hop
    with pytest.raises(ValueError, match="whole number"):
        enc(torch.randn(1, 1, 1000))


def test_known_values_of_a_scaled_or_orthogonally_disturbed_signal():
    """Values fixed by the definitions, not by the implementation: SI-SDR of x + e with e orthogonal to x
    is 10 log10(|x|^2 / |e|^2); doubling a signal moves every log10 mel band by log10 2 and gives STFT
    distance 1 + ln 2 (spectral convergence 1, log-magnitude L1 ln 2, at every resolution); a tone
    transposed by 10% has F0 RMSE of 10% of its F0 and, where the reconstruction is silent for
    a span, voicing F1 = 2 tp / (|voiced ref| + |voiced rec|)."""
    x = speechlike(seed=4).astype(np.float64)
    e = np.random.default_rng(5).standard_normal(len(x))
    e -= (e @ x) / (x @ x) * x  # orthogonal to x
    x, e = x - x.mean(), e - e.mean()
    e -= (e @ x) / (x @ x) * x
    e *= math.sqrt((x @ x) / (e @ e)) / 10  # |x|^2 / |e|^2 = 100: 20 dB
    assert math.isclose(am.si_sdr(x.astype(np.float32), (x + e).astype(np.float32), RATE), 20.0, abs_tol=1e-3)
    # broadband (white noise), so no mel band or STFT bin sits at the log floors (1e-5, 1e-7)
    w = (0.1 * np.random.default_rng(6).standard_normal(2 * RATE)).astype(np.float32)
    assert math.isclose(am.mel_distance(w, 2 * w, RATE), math.log10(2), rel_tol=1e-3)
    assert math.isclose(am.stft(w, 2 * w, RATE), 1 + math.log(2), rel_tol=1e-3)
    # a steady harmonic tone at 150 Hz vs 165 Hz: WORLD tracks both, RMSE 15 Hz
    t = np.arange(RATE) / RATE
    tone = lambda f: (0.1 * sum(np.sin(2 * np.pi * k * f * t) / k for k in range(1, 10))).astype(np.float32)
    assert math.isclose(am.f0_rmse(tone(150), tone(165), RATE), 15.0, abs_tol=0.5)
    ref, deg = tone(150), tone(150).copy()
    deg[RATE // 2:] = 0  # the second half silent: recall ~1/2, precision 1
    a, b = am.f0_pair(ref, deg, RATE)
    truth, guess = a > 0, b > 0
    assert truth.sum() > 90 and guess.sum() < 0.6 * truth.sum()
    assert am.vuv_f1(ref, deg, RATE) == 2 * (truth & guess).sum() / (truth.sum() + guess.sum())
    assert math.isclose(am.vuv_f1(ref, deg, RATE), 2 / 3, abs_tol=0.05)  # F1 of recall 1/2, precision 1
