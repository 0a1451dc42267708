"""Nearest-code search speed and agreement (issue 14, P1), run side by side in one process.

At each shape: faiss IndexFlatL2 as configured by default (the baseline), the same index with its
blocked kernels at any batch size (blas_threshold=0, what nearest_code asks faiss for),
vqbench.ops.nearest_code, the addmm search it used before faiss (kept here as `old_addmm`), and
torch.cdist. Prints each one's time, GFLOP/s and
its speed as a ratio of faiss's (faiss time / its time: >= 0.9 is the goal), then how many
assignments differ from a float64 search and from faiss, with the float64 distance gap of each
disagreement (a gap at float32 rounding level is a near-tie, not an error). The runs interleave, in
an order that rotates every repeat, so machine noise hits all alike; medians are reported.

Usage: python bench/nearest_code.py [--shapes 65536x64x8192,1024x16x16384 --threads 1 --repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import faiss
import torch

from vqbench.ops import nearest_code


@torch.no_grad()
def old_addmm(z, codebook, budget: int = 2 ** 20):
    """vqbench.ops.nearest_code before faiss: one addmm of |c|^2 - 2 z.c per chunk of rows."""
    chunk = max(1, budget // codebook.shape[0])
    c_sq = (codebook * codebook).sum(1)
    idx = torch.empty(z.shape[0], dtype=torch.long)
    dist = torch.empty(z.shape[0], dtype=z.dtype)
    for start in range(0, z.shape[0], chunk):
        block = z[start:start + chunk]
        best, arg = torch.addmm(c_sq, block, codebook.T, beta=1, alpha=-2).min(1)
        idx[start:start + chunk] = arg
        dist[start:start + chunk] = (best + (block * block).sum(1)).clamp_min(0)
    return idx, dist


def blas_always(index, z):
    """IndexFlatL2 with faiss's blocked kernels at any n (what nearest_code asks faiss for)."""
    saved, faiss.cvar.distance_compute_blas_threshold = faiss.cvar.distance_compute_blas_threshold, 0
    try:
        return torch.from_numpy(index.search(z.numpy(), 1)[1][:, 0])
    finally:
        faiss.cvar.distance_compute_blas_threshold = saved


def cdist(z, codebook):
    best, idx = torch.cdist(z, codebook).min(1)
    return idx, best ** 2


def float64_reference(z, codebook) -> tuple[torch.Tensor, torch.Tensor]:
    """Assignments and all-code distances' top-2 gap of a float64 search (rounding ~1e-16 relative)."""
    z, codebook = z.double(), codebook.double()
    c_sq = (codebook * codebook).sum(1)
    idx, gap = [], []
    for start in range(0, z.shape[0], 1024):
        block = z[start:start + 1024]
        d = torch.addmm(c_sq, block, codebook.T, beta=1, alpha=-2) + (block * block).sum(1, keepdim=True)
        two = d.topk(min(2, d.shape[1]), dim=1, largest=False)
        idx.append(two.indices[:, 0])
        gap.append(two.values[:, -1] - two.values[:, 0])
    return torch.cat(idx), torch.cat(gap)


def bench_shape(n: int, dim: int, codes: int, repeats: int) -> None:
    gen = torch.Generator().manual_seed(0)
    z, book = torch.randn(n, dim, generator=gen), torch.randn(codes, dim, generator=gen)
    index = faiss.IndexFlatL2(dim)
    index.add(book.numpy())
    runs = {
        "faiss IndexFlatL2 (baseline)": lambda: torch.from_numpy(index.search(z.numpy(), 1)[1][:, 0]),
        "faiss, blas_threshold=0": lambda: blas_always(index, z),
        "vqbench nearest_code (new)": lambda: nearest_code(z, book)[0],
        "old addmm path": lambda: old_addmm(z, book)[0],
        "torch.cdist": lambda: cdist(z, book)[0],
    }
    # A first untimed call gives the assignments and sizes the samples: short calls repeat inside a
    # sample so that it lasts about 0.5 s.
    assigned, inner = {}, {}
    for name, fn in runs.items():
        start = time.perf_counter()
        assigned[name] = fn()
        inner[name] = max(1, round(0.5 / (time.perf_counter() - start)))
    times = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            for _ in range(inner[name]):
                runs[name]()
            times[name].append((time.perf_counter() - start) / inner[name])
    ref, gap = float64_reference(z, book)
    base = statistics.median(times[names[0]])
    flops = 2 * n * codes * dim
    print(f"n={n} d={dim} K={codes}, threads torch={torch.get_num_threads()} faiss={faiss.omp_get_max_threads()}, "
          f"median of {repeats}")
    print(f"  {'':30s} {'ms':>9s} {'GFLOP/s':>8s} {'x faiss':>8s} {'!= float64':>11s} {'!= faiss':>9s}")
    for name in names:
        t = statistics.median(times[name])
        wrong = (assigned[name] != ref).nonzero().flatten()
        print(f"  {name:30s} {t * 1e3:9.2f} {flops / t / 1e9:8.1f} {base / t:8.2f} {len(wrong):11d} "
              f"{int((assigned[name] != assigned[names[0]]).sum()):9d}")
        for row in wrong[:5].tolist():
            pair = torch.stack([assigned[name][row], ref[row]])
            d64 = ((z[row].double() - book[pair].double()) ** 2).sum(1)
            print(f"      row {row}: picked {int(assigned[name][row])} vs {int(ref[row])}, float64 distance gap "
                  f"{float(d64[0] - d64[1]):.3g} of {float(d64[1]):.4g}")
    print(f"  float64 top-2 gap: min {float(gap.min()):.3g}, rows with gap < 1e-4: {int((gap < 1e-4).sum())}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="65536x64x8192,1024x16x16384", help="n x dim x K, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)  # the baseline's; nearest_code pins faiss to torch's count itself
    for shape in args.shapes.split(","):
        bench_shape(*map(int, shape.split("x")), repeats=args.repeats)


if __name__ == "__main__":
    main()
