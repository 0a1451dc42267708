"""Image metrics: PSNR/SSIM by hand, FID/KID behaviour and caching, the InceptionV3 port, LPIPS."""
from __future__ import annotations


import uuid

import pytest
import torch

from vqbench.families.image.data import uint8_to_float
from vqbench.families.sources import fetch
from vqbench.metrics import MetricUnavailable, Unavailable
from vqbench.families.image.metrics import LPIPS, PSNR, SSIM, InceptionMetrics, frechet_distance, inception, weights_or_reason


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photos(lite_photos) -> torch.Tensor:
    """16 real 64x64 eval crops in [-1, 1]."""
    return uint8_to_float(lite_photos.eval_set[::8][:16])


def test_psnr_is_the_mean_of_per_image_values():
    x = torch.zeros(2, 3, 16, 16)  # pixel 0.5 in [0, 1]
    x_hat = x.clone()
    x_hat[0] += 0.2  # +0.1 in [0, 1]: MSE 0.01 -> 20 dB
    x_hat[1] += 0.02  # +0.01: MSE 1e-4 -> 40 dB
    m = PSNR()
    m.update(x_hat, x)
    assert m.compute() == pytest.approx(30.0, abs=1e-4)  # not 10 log10(1 / mean MSE) = 22.97


def test_ssim_of_constant_images_by_hand():
    x, x_hat = torch.zeros(1, 3, 32, 32), torch.full((1, 3, 32, 32), 0.2)  # 0.5 and 0.6 in [0, 1]
    c1 = (0.01 * 1.0) ** 2  # no variance: SSIM = luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
    expected = (2 * 0.5 * 0.6 + c1) / (0.5 ** 2 + 0.6 ** 2 + c1)
    m = SSIM()
    m.update(x_hat, x)
    assert m.compute() == pytest.approx(expected, abs=1e-5)
    m.reset()
    m.update(x, x)
    assert m.compute() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.network
def test_inception_port_matches_the_torchscript_original():
    ts = torch.jit.load(str(fetch("fid-inception") / "default_1.pt"), map_location="cpu").eval()
    x = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = inception("cpu")(x)[0]
        original = ts((x.float() - 128) / 128)  # the port's input convention: TF's (x - 128) / 128
    assert ours.shape == (2, 2048)
    assert (ours - original).abs().max() < 1e-5


def test_frechet_distance_equals_torch_fidelity():
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(40, 64, generator=gen, dtype=torch.float64)
    b = 0.5 * a + torch.randn(40, 64, generator=gen, dtype=torch.float64) + 0.2
    stats = [(f.mean(0), torch.cov(f.T)) for f in (a, b)]
    expected = fid_statistics_to_metric(*({"mu": mu.numpy(), "sigma": s.numpy()} for mu, s in stats),
                                        verbose=False)["frechet_inception_distance"]
    assert frechet_distance(*stats[0], *stats[1]) == pytest.approx(expected, rel=1e-6)  # eigvals of S1 S2 loses ~1e-8
    assert frechet_distance(*stats[0], *stats[0]) == pytest.approx(0, abs=1e-5)


@pytest.mark.network
def test_fid_kid_self_zero_noise_positive_and_reference_cache(photos):
    first = InceptionMetrics(f"test-{uuid.uuid4().hex}")  # a fresh reference entry for this test run
    try:
        for i in range(0, len(photos), 8):  # streaming, in batches
            first.update(photos[i:i + 8], photos[i:i + 8])
        same = first.compute()
        assert first.extractor_calls == 2 * len(photos)
        assert abs(same["rfid"]) < 1e-3
        # KID is an unbiased MMD estimate: a set against itself scores about -2 (k(x,x) - k(x,y)) / n, not 0
        assert same["kid"] < 1e-3
        assert first.reference_path.is_file()
        second = InceptionMetrics(first.reference_key)  # same eval set: the real side comes from the cache
        assert second.reference_path == first.reference_path
        noisy = (photos + 0.3 * torch.randn(photos.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
        second.update(noisy, photos)
        assert second.extractor_calls == len(photos)  # only the reconstructions went through InceptionV3
        worse = second.compute()
        assert worse["rfid"] > 50 and worse["kid"] > same["kid"] + 0.05
    finally:
        first.reference_path.unlink(missing_ok=True)


@pytest.mark.network
def test_lpips_zero_on_identity_and_monotone_in_noise(photos):
    net = LPIPS()
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(photos.shape, generator=gen)
    with torch.no_grad():
        assert net(photos, photos).abs().max() == 0
        d = [float(net((photos + s * noise).clamp(-1, 1), photos).mean()) for s in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert all(a < b for a, b in zip(d, d[1:])), d
    assert 0 < d[0] < 0.05 and d[-1] > 0.5


def test_missing_weights_make_the_metric_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("VQBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    metric = weights_or_reason(LPIPS)
    assert isinstance(metric, Unavailable) and "lpips-alexnet" in metric.reason
    metric.update(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(MetricUnavailable, match="lpips-alexnet"):
        metric.compute()
