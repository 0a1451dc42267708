"""The image family: task files, build(), the model's token layout and the GAN/LPIPS loss."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from vqbench.contract import Quantizer, QuantizerOutput
from vqbench.families import get_family
from vqbench.families.image.metrics import LPIPS, PSNR, SharedView
from vqbench.families.image.model import Decoder, Encoder, ReconstructionLoss, from_tokens, to_tokens
from vqbench.metrics import METRICS, MetricContext, build_metrics
from vqbench.ops import nearest_code, straight_through
from vqbench.schema import ConfigError
from vqbench.tasks import get_task, list_tasks


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class NearestVQ(Quantizer):
    """Plain VQ-VAE quantizer (nearest code, straight-through, commitment loss) to drive the family."""

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


def test_task_files_and_registry():
    ids = [t.id for t in list_tasks("image/*")]
    assert ids == ["image/imagenet128@codebook_size=1024", "image/imagenet128@codebook_size=8192",
                   "image/imagenet128@codebook_size=65536", "image/imagenet128@codebook_size=262144",
                   "image/lite@codebook_size=1024", "image/lite@codebook_size=4096", "image/two-level"]
    family = get_family("image")
    assert family.primary_metric in family.metrics and all(m in METRICS for m in family.metrics)
    assert not METRICS["rfid"].higher_is_better and METRICS["psnr"].higher_is_better
    full = get_task("image/imagenet128@codebook_size=65536")
    assert full.tier == "full" and full.model.ch_mult == [1, 2, 2, 4] and full.data.resolution == 128
    bad = dataclasses.replace(full, data=dataclasses.replace(full.data, resolution=100))
    with pytest.raises(ConfigError, match="multiple of the model's downsampling factor 8"):
        family.check(bad)


def test_model_token_layout():
    enc, dec = Encoder(8, 16, [1, 2, 2, 2], 1), Decoder(8, 16, [1, 2, 2, 2], 1)
    assert enc.factor == 8 and enc(torch.randn(2, 3, 64, 48)).shape == (2, 8 * 6, 8)
    grid = torch.randn(2, 8, 3, 5)  # (batch, dim, h, w)
    tokens = to_tokens(grid)
    assert torch.equal(tokens[:, 7], grid[:, :, 1, 2])  # token t is cell (t // w, t % w): row-major
    assert torch.equal(from_tokens(tokens, (3, 5)), grid)
    assert dec(enc(torch.randn(2, 3, 64, 64))).shape == (2, 3, 64, 64)


def job_metrics(task, setup=None):
    """The task's metrics as a job builds them: from the registered specs and the setup's context."""
    setup = setup or get_family(task.family).build(task, 0, torch.device("cpu"))
    return build_metrics(task.metrics, MetricContext(task, torch.device("cpu"), setup.metric_context))


@pytest.mark.network
def test_lite_build_trains_and_evaluates():
    task = get_task("image/lite@codebook_size=1024")
    task = dataclasses.replace(task, metrics=("psnr", "ssim", "mse", "lpips"))  # rFID/KID: test_image_metrics
    family = get_family("image")
    setup = family.build(task, seed=0, device=torch.device("cpu"))
    fidelity = job_metrics(task, setup)
    again = family.build(task, seed=0, device=torch.device("cpu"))
    x = next(setup.train_batches)
    assert x.shape == (16, 3, 64, 64) and torch.equal(x, next(again.train_batches))
    evals = list(setup.eval_batches())
    assert sum(len(b) for b in evals) == 128 and torch.equal(evals[0], next(iter(setup.eval_batches())))
    torch.manual_seed(0)
    quantizer = NearestVQ(task.quantizer.dim, task.quantizer.codebook_size)
    params = [*setup.encoder.parameters(), *setup.decoder.parameters(), *quantizer.parameters()]
    opt = torch.optim.Adam(params, lr=task.train.lr)
    losses = []
    for _ in range(12):
        x = next(setup.train_batches)
        out = quantizer(setup.encoder(x))
        loss = setup.reconstruction_loss(setup.decoder(out.z_q), x) + out.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < sum(losses[:3])
    with torch.no_grad():
        for x in evals:
            x_hat = setup.decoder(quantizer.decode(quantizer(setup.encoder(x)).codes))
            for metric in fidelity.values():
                metric.update(x_hat, x)
    result = {name: m.compute() for name, m in fidelity.items()}
    assert set(result) == {"psnr", "ssim", "mse", "lpips"} and all(isinstance(v, float) for v in result.values())
    # A decoder of flat grey scores ~12.7 dB here, inside any loose bound: beat it. (12 steps only just
    # do, by ~0.2 dB; known values and a real reconstruction's margin: test_metrics_known.py.)
    grey = PSNR()
    for x in evals:
        grey.update(torch.zeros_like(x), x)
    assert result["psnr"] > grey.compute() and 0 < result["ssim"] < 1 and 0 < result["lpips"] < 1


@pytest.mark.network
def test_rfid_and_kid_share_one_inception_pass():
    task = dataclasses.replace(get_task("image/lite@codebook_size=1024"), metrics=("rfid", "kid"))
    metrics = job_metrics(task)
    assert isinstance(metrics["rfid"], SharedView) and metrics["rfid"].shared is metrics["kid"].shared
    assert metrics["rfid"].owner and not metrics["kid"].owner


@pytest.mark.network
def test_gan_and_lpips_loss_trains_its_discriminator_only_when_training():
    loss_fn = ReconstructionLoss("l1", perceptual_weight=1.0, gan_weight=0.1, gan_start=1, disc_channels=8,
                                 disc_layers=2, lpips=LPIPS())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    x_hat = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
    snapshot = lambda: [p.detach().clone() for p in loss_fn.disc.parameters()]  # noqa: E731
    before = snapshot()
    first = loss_fn(x_hat, x)  # step 0 < gan_start: pixel + LPIPS only, discriminator untouched
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot()))
    second = loss_fn(x_hat, x)  # GAN on: generator term + one discriminator step
    assert any(not torch.equal(a, b) for a, b in zip(before, snapshot()))
    second.backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in loss_fn.lpips.parameters())
    after = snapshot()
    with torch.no_grad():  # evaluation: no discriminator step
        loss_fn(x_hat, x)
    assert all(torch.equal(a, b) for a, b in zip(after, snapshot()))
    assert first.item() > 0 and loss_fn.calls == 2
