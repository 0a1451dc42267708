"""Nearest-code search speed: vqbench.ops.nearest_code against a torch.cdist baseline, run side by side.

Prints ratios (baseline time / candidate time, > 1 is faster), interleaving the runs so machine
noise hits both alike. Usage: python bench/nearest_code.py [--n 65536 --dim 64 --codes 8192 --threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from vqbench.ops import nearest_code


def cdist_baseline(z, codebook):
    d = torch.cdist(z, codebook)
    best, idx = d.min(1)
    return idx, best ** 2


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--codes", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budgets", default="", help="comma-separated chunk budgets (elements) to compare")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    z, book = torch.randn(args.n, args.dim, generator=gen), torch.randn(args.codes, args.dim, generator=gen)
    candidates = {"nearest_code (default)": lambda: nearest_code(z, book)}
    for budget in filter(None, args.budgets.split(",")):
        candidates[f"nearest_code budget={budget}"] = lambda b=int(budget): nearest_code(z, book, budget=b)
    flops = 2 * args.n * args.codes * args.dim
    times = {name: [] for name in ["cdist (baseline)", *candidates]}
    for _ in range(args.repeats):
        times["cdist (baseline)"].append(timed(cdist_baseline, z, book))
        for name, fn in candidates.items():
            times[name].append(timed(fn))
    base = statistics.median(times["cdist (baseline)"])
    print(f"n={args.n} dim={args.dim} K={args.codes} threads={args.threads} (median of {args.repeats})")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"  {name:34s} {t * 1e3:8.1f} ms  {flops / t / 1e9:6.1f} GFLOP/s  speedup x{base / t:.2f}")


if __name__ == "__main__":
    main()
