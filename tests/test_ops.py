"""vqbench.ops.nearest_code: exact assignments against a float64 brute force on both of its paths
(faiss on CPU, chunked addmm elsewhere), float32 search under autocast, the inputs callers pass
(grad-requiring, non-contiguous, float64 codebooks, empty, K=1) and bounded memory at K = 2^18."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import faiss
import pytest
import torch

from vqbench.ops import nearest_code

BACKENDS = ["faiss", "torch"]


def brute_force(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 |z - c|^2 against every code, no expansion: the exact reference (and its distances)."""
    z, codebook = z.double().reshape(-1, 1, codebook.shape[1]), codebook.double()
    rows = max(1, 2 ** 22 // codebook.numel())
    d = torch.cat([((z[i:i + rows] - codebook) ** 2).sum(-1) for i in range(0, len(z), rows)])
    return d.argmin(1), d


def assert_exact(idx: torch.Tensor, z: torch.Tensor, codebook: torch.Tensor) -> None:
    """Same codes as the float64 brute force, except where two codes are within float32 rounding of
    each other (then the picked code's float64 distance must be that close to the best)."""
    ref, d = brute_force(z, codebook)
    rows = torch.arange(len(ref))
    best, picked = d[rows, ref], d[rows, idx]
    near_tie = picked - best <= 1e-6 * best.clamp_min(1.0)
    assert bool(((idx == ref) | near_tie).all())
    assert int((idx != ref).sum()) <= max(1, len(ref) // 1000)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,dim,k", [(3, 4, 7), (700, 16, 2500), (1500, 64, 1100), (300, 8, 5000)])
def test_matches_float64_brute_force(backend, n, dim, k):
    gen = torch.Generator().manual_seed(n + k)
    z, book = torch.randn(n, dim, generator=gen), torch.randn(k, dim, generator=gen)
    idx, dist = nearest_code(z, book, backend=backend)
    assert idx.dtype == torch.int64 and idx.shape == (n,) and dist.dtype == torch.float32
    assert_exact(idx, z, book)
    exact = ((z.double() - book.double()[idx]) ** 2).sum(1)
    torch.testing.assert_close(dist.double(), exact, rtol=1e-6, atol=1e-6)


def test_backends_agree_and_small_torch_chunks_change_nothing():
    gen = torch.Generator().manual_seed(3)
    z, book = torch.randn(2000, 32, generator=gen), torch.randn(3000, 32, generator=gen)
    faiss_idx, faiss_dist = nearest_code(z, book, backend="faiss")
    torch_idx, torch_dist = nearest_code(z, book, backend="torch", budget=3000 * 7)  # 7 rows a chunk
    assert torch.equal(faiss_idx, torch_idx) and torch.equal(faiss_dist, torch_dist)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_codes(backend):
    """Identical codes are exact ties: the torch path takes the lowest index; faiss's blocked kernels
    round a code's distance by its position in the block, so they may take any copy."""
    gen = torch.Generator().manual_seed(4)
    book = torch.randn(50, 8, generator=gen)
    z = torch.randn(400, 8, generator=gen)
    idx, _ = nearest_code(z, torch.cat([book, book, book]), backend=backend)  # every code three times
    assert_exact(idx % 50, z, book)
    if backend == "torch":
        assert int(idx.max()) < 50


def test_float64_codebook_searches_in_float64():
    """A float64 codebook (or z) is searched in float64 (the torch path), so even codes 1e-9 apart,
    which float32 cannot tell apart, are ranked exactly; distances keep z's dtype."""
    gen = torch.Generator().manual_seed(5)
    book = torch.randn(64, 16, generator=gen, dtype=torch.float64)
    book = torch.cat([book, book + 1e-9])  # the shifted copies are nearer for z with positive sums
    z = torch.randn(500, 16, generator=gen)
    idx, dist = nearest_code(z, book)
    ref, d = brute_force(z, book)
    assert torch.equal(idx, ref) and dist.dtype == torch.float32
    torch.testing.assert_close(dist, d[torch.arange(500), ref].float())
    assert (idx >= 64).any() and (idx < 64).any()  # both copies won somewhere: float64 decided


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_requiring_and_non_contiguous_inputs(backend):
    """What quantizers pass: (batch, tokens, dim) views that require grad, a codebook parameter."""
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(16, 8, 30, generator=gen).transpose(1, 2).requires_grad_()  # (16, 30, 8)
    book = torch.nn.Parameter(torch.randn(300, 16, generator=gen)[:, ::2])  # non-contiguous columns
    assert not z.is_contiguous() and not book.is_contiguous()
    idx, dist = nearest_code(z, book, backend=backend)
    ref_idx, ref_dist = nearest_code(z.detach().contiguous(), book.detach().contiguous(), backend=backend)
    assert idx.shape == (16 * 30,) and torch.equal(idx, ref_idx) and torch.equal(dist, ref_dist)
    assert not idx.requires_grad and not dist.requires_grad
    assert_exact(idx, z.detach().reshape(-1, 8), book.detach())


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input_and_single_code(backend):
    book = torch.randn(10, 4)
    idx, dist = nearest_code(torch.empty(2, 0, 4), book, backend=backend)
    assert idx.shape == (0,) and idx.dtype == torch.int64 and dist.shape == (0,) and dist.dtype == torch.float32
    z = torch.randn(5, 3, 4)
    idx, dist = nearest_code(z, book[:1], backend=backend)
    assert torch.equal(idx, torch.zeros(15, dtype=torch.int64))
    torch.testing.assert_close(dist, ((z.reshape(-1, 4) - book[0]) ** 2).sum(1))


def test_autocast_bfloat16_still_searches_in_float32():
    """At K = 16,384 (d = 16, as synthetic/codebook-scaling) bf16 distances (8-bit mantissa) pick
    wrong codes for a few % of rows; nearest_code must give the float32 answer on the torch path
    (the one GPUs take) under autocast, and keep a bf16 z's dtype for the distances."""
    gen = torch.Generator().manual_seed(7)
    book, z = torch.randn(16384, 16, generator=gen), torch.randn(2048, 16, generator=gen)
    expected, _ = nearest_code(z, book, backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        naive = torch.addmm((book * book).sum(1), z, book.T, beta=1, alpha=-2).argmin(1)
        assert (naive != expected).float().mean() > 0.01  # the hazard is real (2.7% of rows here)
        idx, dist = nearest_code(z, book, backend="torch")
        idx_bf16, dist_bf16 = nearest_code(z.bfloat16(), book)  # an encoder's bf16 output
    assert torch.equal(idx, expected) and dist.dtype == torch.float32
    assert_exact(idx, z, book)
    assert dist_bf16.dtype == torch.bfloat16
    assert_exact(idx_bf16, z.bfloat16().float(), book)


def test_faiss_threads_follow_torch_and_do_not_change_codes():
    gen = torch.Generator().manual_seed(8)
    z, book = torch.randn(5000, 16, generator=gen), torch.randn(2000, 16, generator=gen)
    threshold = faiss.cvar.distance_compute_blas_threshold
    one, _ = nearest_code(z, book)
    assert faiss.omp_get_max_threads() == 1  # the autouse fixture's one torch thread
    torch.set_num_threads(2)
    try:
        two, _ = nearest_code(z, book)
        assert faiss.omp_get_max_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert torch.equal(one, two)
    assert faiss.cvar.distance_compute_blas_threshold == threshold  # restored for other faiss users


@pytest.mark.parametrize("backend", BACKENDS)
def test_extra_memory_is_bounded_at_k_2_18(backend):
    """4,096 x 262,144 distances are 4 GiB; the search holds a few MiB of them at a time. Peak RSS
    of a fresh process, over its RSS before the search, must stay under 1 GB (issue 14, P1)."""
    code = textwrap.dedent(f"""
        import torch
        from vqbench.ops import nearest_code
        torch.set_num_threads(1)
        gen = torch.Generator().manual_seed(0)
        z, book = torch.randn(4096, 8, generator=gen), torch.randn(262144, 8, generator=gen)
        nearest_code(z[:2], book[:64], backend="{backend}")  # load the libraries first
        def status_kib(field):
            return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to now: imports don't count
        before = status_kib("VmRSS") * 1024
        idx, dist = nearest_code(z, book, backend="{backend}")
        peak = status_kib("VmHWM") * 1024
        assert idx.shape == (4096,) and bool((dist >= 0).all())
        print(peak - before)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    extra = int(out.stdout.split()[-1])
    assert extra < 1e9, f"{extra / 2 ** 20:.0f} MiB extra"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_matches_cpu_under_autocast():
    gen = torch.Generator().manual_seed(9)
    book = torch.randn(16384, 64, generator=gen)
    z = book[torch.randint(16384, (4096,), generator=gen)] + 0.05 * torch.randn(4096, 64, generator=gen)
    cpu_idx, _ = nearest_code(z, book)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        idx, dist = nearest_code(z.cuda(), book.cuda())
    assert idx.device.type == "cuda" and dist.dtype == torch.float32
    assert_exact(idx.cpu(), z, book)
    assert (idx.cpu() != cpu_idx).sum() <= 4  # near-ties only (checked above)
