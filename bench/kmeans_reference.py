"""The synthetic distortion ratio's k-means reference, old against new, side by side in one run.

On the eval set of `synthetic/codebook-scaling@codebook_size=K` (the data the metric uses), for each K:
- old: the reference as it was up to ALGORITHM v1 (exact k-means++, one draw per centre, then
  Lloyd, which stopped after one step unless a cluster was empty), one restart;
- new: `vqbench.kmeans.kmeans` (batched D^2 seeding, Lloyd, Hartigan moves), one restart;
- scipy: `scipy.cluster.vq.kmeans2` from the old run's k-means++ seeds (minit="matrix", its
  default 10 iterations; scipy's own "++" init is quadratic in K), for K <= --scipy-max-k (its
  vq builds the whole n x K float64 distance matrix: 8.6 GB at K = 16,384).
Prints time ratio (old / new, > 1 is faster) and objective ratios (new / old, new / scipy; < 1 is
a lower, better k-means objective). One torch and one faiss thread.

`--repeats R` runs old and new R times each, alternating, and prints every ratio and the median
(the old reference's time varies most: its 16,384 small steps each allocate and free a 4 MB
temporary, so page faults, i.e. system time, dominate it on a busy VM).

Usage: python bench/kmeans_reference.py [--ks 1024,4096,16384] [--scipy-max-k 4096] [--repeats 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import scipy.cluster.vq
import torch

from vqbench.families.synthetic import Distribution
from vqbench.kmeans import faiss_search, kmeans, kmeans_plus_plus
from vqbench.tasks import get_task


def old_reference(x: torch.Tensor, k: int, seed: int = 0) -> tuple[torch.Tensor, float, torch.Tensor]:
    """ALGORITHM v1, reimplemented: k-means++ then Lloyd whose stopping test `previous - mse <= tol *
    previous` with previous = inf was true at once (it went on only while a cluster was empty)."""
    from vqbench.ops import nearest_code

    seeds = kmeans_plus_plus(x, k, torch.Generator().manual_seed(seed))
    centers = seeds.clone()
    for _ in range(100):
        assign, dist = nearest_code(x, centers)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        centers = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers)
        empty = (counts == 0).nonzero().flatten()
        if not len(empty):
            break
        centers[empty] = x[dist.topk(len(empty)).indices]
    _, dist = nearest_code(x, centers)
    return centers, float(dist.sum()) / x.numel(), seeds


def objective(x: torch.Tensor, centers: torch.Tensor) -> float:
    return float(faiss_search(x, torch.as_tensor(centers).float())[1].double().sum()) / x.numel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ks", default="1024,4096,16384")
    parser.add_argument("--scipy-max-k", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'K':>6} {'old s':>7} {'new s':>7} {'scipy s':>8} {'time old/new':>12} {'old mse':>9} {'new mse':>9} "
          f"{'scipy mse':>9} {'new/old':>8} {'new/scipy':>9}", flush=True)
    for k in map(int, args.ks.split(",")):
        task = get_task(f"synthetic/codebook-scaling@codebook_size={k}")
        x = Distribution(task.data).eval_set.contiguous()
        old_times, new_times = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            _, old_mse, seeds = old_reference(x, k)
            old_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            _, new_mse = kmeans(x, k, n_init=1)
            new_times.append(time.perf_counter() - start)
        if args.repeats > 1:
            print(f"{k:>6} time old/new per repeat: " + ", ".join(f"{a:.1f}/{b:.1f} s = x{a / b:.1f}"
                                                            for a, b in zip(old_times, new_times)), flush=True)
        old_s, new_s = statistics.median(old_times), statistics.median(new_times)
        scipy_s = scipy_mse = float("nan")
        if k <= args.scipy_max_k:
            start = time.perf_counter()
            centres, _ = scipy.cluster.vq.kmeans2(x.double().numpy(), seeds.double().numpy(), minit="matrix")
            scipy_s = time.perf_counter() - start
            scipy_mse = objective(x, torch.from_numpy(np.ascontiguousarray(centres)))
        print(f"{k:>6} {old_s:>7.1f} {new_s:>7.1f} {scipy_s:>8.1f} {old_s / new_s:>11.1f}x {old_mse:>9.5f} "
              f"{new_mse:>9.5f} {scipy_mse:>9.5f} {new_mse / old_mse:>8.3f} {new_mse / scipy_mse:>9.3f}", flush=True)


if __name__ == "__main__":
    main()
