"""Shared numeric kernels for quantizers and the harness."""
from __future__ import annotations

import itertools
import math
import threading

import faiss
import torch
import torch.nn.functional as F
from torch import Tensor


# faiss's own switch between its kernels is per process; nearest_code sets it around each call
# (under this lock, so concurrent calls cannot restore each other's value).
_FAISS_LOCK = threading.Lock()


def _search_faiss(z: Tensor, codebook: Tensor) -> Tensor:
    """Exact top-1 of float32 CPU rows with faiss's brute-force kernel (what IndexFlatL2.search runs,
    without copying the codebook into an index).

    Threads: faiss-cpu ships its own OpenMP runtime (and an OpenMP OpenBLAS), separate from torch's,
    so torch.set_num_threads does not reach it. Unpinned it would use every core, oversubscribe a
    shared machine and ignore the harness's one-thread-per-job rule (vqbench/sandbox.py), so it is
    set to torch.get_num_threads() on every call (OpenMP keeps the setting per calling thread).
    Kernel: below n * d = distance_compute_blas_threshold (128,000 in faiss 1.15) faiss scores one
    query at a time, 2-20x slower than its blocked BLAS / fused top-1 kernels at the batch sizes of
    training (bench/nearest_code.py); threshold 0 always takes the blocked kernels. They hold at most
    4,096 queries x 1,024 codes of distances at a time, so memory does not grow with n x K.
    """
    with _FAISS_LOCK:
        faiss.omp_set_num_threads(torch.get_num_threads())
        saved = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = 0
        try:
            _, labels = faiss.knn(z.contiguous().numpy(), codebook.contiguous().numpy(), 1)
        finally:
            faiss.cvar.distance_compute_blas_threshold = saved
    return torch.from_numpy(labels[:, 0]).clamp_min_(0)  # -1: no finite distance (NaN row) -> code 0


# Distances per chunk of the torch search. A GPU runs one launch per chunk, so small chunks make a
# large-K search launch-bound: 2^20 (4 MiB) at K = 16,384 is 128 chunks of 64 rows per batch of
# 8,192, and the GPU idled most of a training step (bench/gpu_train.py). 2^26 (256 MiB) is 2 chunks
# there, and stays inside the 1 GB bound at K = 2^18 (docs/performance.md, P1).
TORCH_SEARCH_BUDGET = {"cpu": 2 ** 20, "cuda": 2 ** 26}


def _search_torch(z: Tensor, codebook: Tensor, budget: int, m: int = 1) -> Tensor:
    """|z - c|^2 = |z|^2 - 2 z.c + |c|^2 ranked by |c|^2 - 2 z.c, one addmm per chunk of rows into
    at most `budget` distances, so memory stays bounded at K = 2^18 too (any device, any dtype).
    The nearest code of each row (n,), or with m > 1 the m nearest, nearest first (n, m) (the
    k-means reference's candidate search on a GPU, vqbench.kmeans)."""
    chunk = max(1, budget // codebook.shape[0])
    c_sq = (codebook * codebook).sum(1)
    idx = torch.empty(z.shape[0], *((m,) if m > 1 else ()), dtype=torch.long, device=z.device)
    for start in range(0, z.shape[0], chunk):
        d = torch.addmm(c_sq, z[start:start + chunk], codebook.T, beta=1, alpha=-2)
        idx[start:start + chunk] = d.argmin(1) if m == 1 else d.topk(m, dim=1, largest=False).indices
    return idx


@torch.no_grad()
def nearest_code(z: Tensor, codebook: Tensor, budget: int | None = None,
                 backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Index of the nearest row of `codebook` (K, d) for each row of `z` (..., d) flattened to (n, d),
    and its squared L2 distance (clamped >= 0, in z's dtype).

    The search runs in float32 at least, whatever torch.autocast or the inputs' dtypes say: bf16
    distances (8-bit mantissa) cannot separate the nearest codes at large K. float64 inputs search in
    float64. On CPU float32 goes to faiss's exact brute force (deterministic, the same codes on any
    thread count), at or above the speed of faiss IndexFlatL2 and of this module's earlier addmm
    search (docs/performance.md); other devices and float64 use the chunked addmm search. A near-tie within float32 rounding of
    |z|^2 - 2 z.c + |c|^2 may differ from a float64 search (docs/performance.md); exact ties
    (duplicate codes) go to the lowest index on the torch path, to any copy on faiss's. The distance is recomputed directly as |z - c_idx|^2, so it is the same
    on every path and has no cancellation error. `backend` ("faiss" or "torch") overrides the choice,
    e.g. to test on CPU the path GPUs take; `budget` bounds the torch path's distance chunk
    (default: TORCH_SEARCH_BUDGET for the device).
    """
    z = z.detach().reshape(-1, codebook.shape[-1])
    dtype = torch.promote_types(torch.promote_types(z.dtype, codebook.dtype), torch.float32)
    with torch.autocast(z.device.type, enabled=False):
        zs, cs = z.to(dtype), codebook.detach().to(device=z.device, dtype=dtype)
        on_faiss = z.device.type == "cpu" and dtype == torch.float32
        if backend not in (None, "faiss", "torch"):
            raise ValueError(f"backend must be 'faiss', 'torch' or None, not {backend!r}")
        if backend == "faiss" and not on_faiss:
            raise ValueError(f"the faiss backend takes float32 CPU tensors, not {dtype} on {z.device}")
        if z.shape[0] == 0 or cs.shape[0] == 1:  # nothing to rank (faiss needs n >= 1)
            idx = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        elif backend == "faiss" or (backend is None and on_faiss):
            idx = _search_faiss(zs, cs)
        else:
            idx = _search_torch(zs, cs, budget or TORCH_SEARCH_BUDGET.get(z.device.type, TORCH_SEARCH_BUDGET["cpu"]))
        dist = ((zs - cs[idx]) ** 2).sum(1)
    return idx, dist.to(z.dtype)


def forward_as(value: Tensor, surrogate: Tensor) -> Tensor:
    """Exactly `value` in the forward pass, the gradient of `surrogate` in the backward pass.

    Written value.detach() + (s - s.detach()) rather than s + (value - s).detach(): x - x is exactly
    0, so the output is bit-identical to `value` and eval-mode decode(codes) == z_q holds exactly.
    """
    return value.detach() + (surrogate - surrogate.detach())


def straight_through(z: Tensor, z_q: Tensor) -> Tensor:
    """Forward value z_q, gradient of the identity to z (van den Oord et al. 2017)."""
    return forward_as(z_q, z)


def vq_loss(z: Tensor, z_q: Tensor, beta: float = 0.25) -> Tensor:
    """VQ-VAE eq. 3 without the reconstruction term: |sg[z] - e|^2 (moves codes) + beta |z - sg[e]|^2."""
    return F.mse_loss(z_q, z.detach()) + beta * F.mse_loss(z, z_q.detach())


@torch.no_grad()
def usage_metrics(idx: Tensor, num_codes: int) -> dict[str, Tensor]:
    """Batch code usage for training logs: perplexity exp(H) and fraction of codes used, as 0-d
    tensors: a float() here would make the host wait for the GPU on every step, and the harness
    reads the log only at its curve points (vqbench.train.loggable)."""
    counts = torch.bincount(idx.flatten(), minlength=num_codes).double()
    p = counts / counts.sum()
    entropy = -torch.where(counts > 0, p * p.log(), torch.zeros_like(p)).sum()  # no boolean indexing: it syncs
    return {"perplexity": torch.exp(entropy), "used": (counts > 0).sum().double() / num_codes}


@torch.no_grad()
def ema_codebook_update(cluster_size: Tensor, embed_sum: Tensor, z: Tensor, idx: Tensor,
                        decay: float, eps: float = 1e-5) -> Tensor:
    """EMA k-means step (VQ-VAE appendix A.1, VQ-VAE-2): update the running per-code counts and
    sums in place and return the new codebook sums / Laplace-smoothed counts.

    z (n, d) are the encoder outputs and idx (n,) their assigned codes. Laplace smoothing keeps a
    code with no assignments from dividing by zero: N_k <- (N_k + eps) / (N + K eps) * N.
    """
    num_codes = cluster_size.shape[0]
    z = z.to(embed_sum.dtype)
    cluster_size.mul_(decay).add_(torch.bincount(idx, minlength=num_codes).to(cluster_size.dtype), alpha=1 - decay)
    embed_sum.mul_(decay).index_add_(0, idx, z, alpha=1 - decay)
    n = cluster_size.sum()
    smoothed = (cluster_size + eps) / (n + num_codes * eps) * n
    return embed_sum / smoothed.unsqueeze(1)


@torch.no_grad()
def restart_dead_codes(embed: Tensor, cluster_size: Tensor, embed_sum: Tensor, z: Tensor, threshold: float) -> int:
    """Dead-code restart (Jukebox, SoundStream), in place: every code whose EMA usage `cluster_size`
    is below `threshold` moves to a random row of z (n, d), the current batch's encoder outputs.
    Its running statistics restart there with one pseudo-count, so the next EMA step does not pull
    it back to where it died. Returns the number of codes restarted.
    """
    dead = (cluster_size < threshold).nonzero().squeeze(1)
    if dead.numel():
        new = z[torch.randint(z.shape[0], (dead.numel(),), device=z.device)].to(embed.dtype)
        embed[dead] = new
        cluster_size[dead] = 1.0
        embed_sum[dead] = new
    return dead.numel()


def uniform_init(codebook_size: int, dim: int) -> Tensor:
    """uniform(-1/K, 1/K): the codebook init of the reference PyTorch VQ-VAE ports and taming's VQGAN."""
    return torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)


def code_index(codes: Tensor, codebook_size: int, depth: int) -> Tensor:
    """(..., depth) code tuples -> one joint symbol sum_l c_l * codebook_size^l in [0, K^depth), the
    first level varying fastest (the one order used by the harness and its metrics); depth 1: as is."""
    if depth == 1:
        return codes
    return (codes * codebook_size ** torch.arange(depth, device=codes.device)).sum(-1)


def index_codes(index: Tensor, codebook_size: int, depth: int) -> Tensor:
    """Inverse of code_index for depth > 1: (n,) joint symbols -> (n, depth) code tuples."""
    return index.unsqueeze(-1) // codebook_size ** torch.arange(depth, device=index.device) % codebook_size


def joint_codes(codebook_size: int, depth: int, device=None) -> Tensor:
    """All codebook_size^depth code tuples (N, depth): row i is the tuple whose code_index is i."""
    return index_codes(torch.arange(codebook_size ** depth, device=device), codebook_size, depth)


# FSQ (Mentzer et al. 2023, arXiv 2309.15505) table 1: recommended levels per target codebook size
FSQ_LEVELS = {2 ** 8: [8, 6, 5], 2 ** 10: [8, 5, 5, 5], 2 ** 12: [7, 5, 5, 5, 5],
              2 ** 14: [8, 8, 8, 6, 5], 2 ** 16: [8, 8, 8, 5, 5, 5]}
FSQ_LEVEL_RANGE = range(5, 9)  # every entry of the table uses 5 to 8 levels per channel


def fsq_levels(codebook_size: int) -> list[int]:
    """FSQ levels that fill the budget K without exceeding it (the rate is enforced: prod <= K).

    K in the paper's table 1 with prod(entry) <= K: that entry (it leaves at most 0.1 bit unused:
    240 of 256, 15,360 of 16,384). Any other K, including 2^12 whose entry [7, 5, 5, 5, 5] has 4,375
    codes: the largest product <= K of levels in the table's range 5..8, fewest channels on ties
    (4,096 -> [8, 8, 8, 8], 8,192 -> [8, 8, 5, 5, 5] = 8,000, 2^18 -> [8] * 6). Below 25 (no two
    channels of >= 5 levels fit) floor(log2 K) bits are split over two channels, e.g. 16 -> [4, 4]."""
    table = FSQ_LEVELS.get(codebook_size)
    if table is not None and math.prod(table) <= codebook_size:
        return list(table)
    if codebook_size < FSQ_LEVEL_RANGE[0] ** 2:
        bits = max(int(math.log2(codebook_size)), 1)
        return [2 ** ((bits + 1) // 2), 2 ** (bits // 2)] if bits > 1 else [2]
    best: list[int] = []
    channels = 1
    while FSQ_LEVEL_RANGE[0] ** channels <= codebook_size:
        for levels in itertools.combinations_with_replacement(reversed(FSQ_LEVEL_RANGE), channels):
            if math.prod(best) < math.prod(levels) <= codebook_size:  # strict: fewer channels win ties
                best = list(levels)
        channels += 1
    return best
