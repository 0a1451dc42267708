"""The audio family end to end on a tiny lite corpus: task files, build(), a few training steps, eval
batches of one length each, every metric computed or unavailable with a reason."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from vqbench.contract import Quantizer, QuantizerOutput
from vqbench.families import EvalBatch, get_family
from vqbench.metrics import METRICS, MetricContext, MetricUnavailable, build_metrics
from vqbench.ops import nearest_code, straight_through
from vqbench.schema import ConfigError
from vqbench.tasks import get_task, list_tasks

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class NearestVQ(Quantizer):
    def __init__(self, dim: int, codebook_size: int):
        super().__init__(dim, codebook_size)
        self.codes = torch.nn.Parameter(torch.randn(codebook_size, dim) * 0.1)

    def forward(self, z):
        idx, _ = nearest_code(z.detach(), self.codes.detach())
        z_q = self.codes[idx].view_as(z)
        loss = ((z_q - z.detach()) ** 2).mean() + 0.25 * ((z - z_q.detach()) ** 2).mean()
        return QuantizerOutput(straight_through(z, z_q), idx.view(z.shape[:2]), loss)

    def decode(self, codes):
        return self.codes[codes]


def test_task_files_and_checks():
    ids = [t.id for t in list_tasks("audio/*")]
    assert ids == ["audio/libritts@codebook_size=4096", "audio/libritts@codebook_size=16384",
                   "audio/libritts@codebook_size=65536", "audio/libritts@codebook_size=262144",
                   "audio/lite@codebook_size=1024", "audio/lite@codebook_size=4096"]
    family = get_family("audio")
    assert family.primary_metric == "mel_distance" and all(m in METRICS for m in family.metrics)
    lite = get_task("audio/lite@codebook_size=4096")
    assert lite.tier == "lite" and lite.data.sample_rate == 16000 and math.prod(lite.model.strides) == 320
    assert get_task("audio/libritts@codebook_size=262144").data.sample_rate == 24000
    with pytest.raises(ConfigError, match="not a multiple of the hop 320"):
        family.check(dataclasses.replace(lite, data=dataclasses.replace(lite.data, crop_seconds=0.5001)))
    with pytest.raises(ConfigError, match="list missing_items last"):
        family.check(dataclasses.replace(lite, metrics=("missing_items", "pesq")))


@pytest.mark.network
def test_tiny_lite_build_trains_and_evaluates():
    task = get_task("audio/lite@codebook_size=1024")
    task = dataclasses.replace(task, data=dataclasses.replace(task.data, train_utterances=6, eval_utterances=2),
                               train=dataclasses.replace(task.train, batch_size=2))
    family = get_family("audio")
    family.prepare(task)  # harness code renders the corpus into the cache; the stages only read it
    from vqbench.families.audio import espeak
    from vqbench.families.audio.data import LiteSpeech
    from vqbench.paths import cache_home
    assert (cache_home() / "audio" / f"espeak-{espeak.spec_key(LiteSpeech.items(6, 2))}.npz").is_file()
    setup = family.build(task, 0, torch.device("cpu"))
    again = family.build(task, 0, torch.device("cpu"))
    x = next(setup.train_batches)
    crop = round(task.data.crop_seconds * task.data.sample_rate)
    assert x.shape == (2, 1, crop) and torch.equal(x, next(again.train_batches))
    torch.manual_seed(0)
    quantizer = NearestVQ(task.quantizer.dim, task.quantizer.codebook_size)
    params = [*setup.encoder.parameters(), *setup.decoder.parameters(), *quantizer.parameters()]
    opt = torch.optim.Adam(params, lr=task.train.lr)
    for _ in range(3):
        x = next(setup.train_batches)
        out = quantizer(setup.encoder(x))
        loss = setup.reconstruction_loss(setup.decoder(out.z_q), x) + out.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    ctx = MetricContext(task, torch.device("cpu"), setup.metric_context)
    metrics = build_metrics(task.metrics, ctx)
    batches = list(setup.eval_batches())
    ids = [i for b in batches for i in b.ids]
    assert sum(i.startswith("real/") for i in ids) == 10 and sum(i.startswith("espeak/") for i in ids) == 2
    with torch.no_grad():
        for b in batches:
            z = setup.encoder(b.x)
            codes = quantizer(z).codes
            z_hat = quantizer.decode(codes)
            x_hat = setup.decoder(z_hat)
            assert x_hat.shape == b.x.shape and codes.numel() * 320 == b.x.numel()
            for m in metrics.values():
                m.update(EvalBatch(b, x_hat, z, z_hat, codes, None))
    values = {}
    for name, m in metrics.items():
        try:
            values[name] = m.compute()
        except MetricUnavailable as e:
            values[name] = str(e)
    assert "UTMOS" in values["utmos"] and values["bitrate_kbps"] == 0.5
    for name in ("si_sdr", "stoi", "mel_distance", "stft_distance", "missing_items"):
        assert isinstance(values[name], float) and math.isfinite(values[name]), (name, values[name])
    for name in ("pesq", "f0_rmse", "vuv_f1"):  # 3 steps: a reconstruction may have no voiced frame at all
        assert isinstance(values[name], float) or "scored no utterance" in values[name], (name, values[name])

