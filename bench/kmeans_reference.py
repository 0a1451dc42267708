"""The synthetic distortion ratio's k-means reference, old against new, side by side in one run.

On the eval set of `synthetic/codebook-scaling@codebook_size=K` (the data the metric uses), for each K:
- old: the reference as it was up to ALGORITHM v1 (exact k-means++, one draw per centre, then
  Lloyd, which stopped after one step unless a cluster was empty), one restart;
- v2: the reference as it was in ALGORITHM v2 (batched D^2 seeding, Lloyd until a step gains under
  1%, Hartigan moves with one candidate refresh), one restart;
- new: `vqbench.kmeans.kmeans` (batched D^2 seeding, Hartigan moves from one candidate search, Lloyd
  until a step gains under 0.1%), one restart;
- scipy: `scipy.cluster.vq.kmeans2` from the old run's k-means++ seeds (minit="matrix", its
  default 10 iterations; scipy's own "++" init is quadratic in K), for K <= --scipy-max-k (its
  vq builds the whole n x K float64 distance matrix: 8.6 GB at K = 16,384).
Prints time ratios (old / new and v2 / new, > 1 is faster) and objective ratios (new / old, new / v2,
new / scipy; < 1 is a lower, better k-means objective). One torch and one faiss thread.

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
from vqbench.kmeans import _nearest, _update, batched_d2_seeding, faiss_search, hartigan, kmeans, kmeans_plus_plus
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


def v2_reference(x: torch.Tensor, k: int, seed: int = 0) -> float:
    """ALGORITHM v2, reimplemented from the library's parts: seeding, Lloyd steps until one gains
    under 1% (the first reusing the seeding's assignment), Hartigan with one candidate refresh."""
    centers, assign, dist = batched_d2_seeding(x, k, torch.Generator().manual_seed(seed))
    previous = float("inf")
    for step in range(100):
        if step:
            assign, dist = _nearest(x, centers)
        mse = float(dist.sum()) / x.numel()
        centers, had_empty = _update(x, centers, assign, dist)
        if not had_empty and previous - mse <= 1e-2 * mse:
            break
        previous = mse
    assign = hartigan(x, assign, k, refreshes=1)
    counts = torch.bincount(assign, minlength=k)
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, assign, x.double())
    return objective(x, torch.where(counts[:, None] > 0, (sums / counts.clamp_min(1)[:, None]).float(), centers))


def objective(x: torch.Tensor, centers: torch.Tensor) -> float:
    return float(faiss_search(x, torch.as_tensor(centers).float())[1].double().sum()) / x.numel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ks", default="1024,4096,16384")
    parser.add_argument("--scipy-max-k", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'K':>6} {'old s':>7} {'v2 s':>6} {'new s':>7} {'scipy s':>8} {'time old/new':>12} {'v2/new':>7} "
          f"{'old mse':>9} {'v2 mse':>9} {'new mse':>9} {'scipy mse':>9} {'new/old':>8} {'new/v2':>7} {'new/scipy':>9}",
          flush=True)
    for k in map(int, args.ks.split(",")):
        task = get_task(f"synthetic/codebook-scaling@codebook_size={k}")
        x = Distribution(task.data).eval_set.contiguous()
        old_times, v2_times, new_times = [], [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            _, old_mse, seeds = old_reference(x, k)
            old_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            v2_mse = v2_reference(x, k)
            v2_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            _, new_mse = kmeans(x, k, n_init=1)
            new_times.append(time.perf_counter() - start)
        if args.repeats > 1:
            print(f"{k:>6} time old/new per repeat: " + ", ".join(f"{a:.1f}/{b:.1f} s = x{a / b:.1f}"
                                                            for a, b in zip(old_times, new_times)), flush=True)
        old_s, v2_s, new_s = map(statistics.median, (old_times, v2_times, new_times))
        scipy_s = scipy_mse = float("nan")
        if k <= args.scipy_max_k:
            start = time.perf_counter()
            centres, _ = scipy.cluster.vq.kmeans2(x.double().numpy(), seeds.double().numpy(), minit="matrix")
            scipy_s = time.perf_counter() - start
            scipy_mse = objective(x, torch.from_numpy(np.ascontiguousarray(centres)))
        print(f"{k:>6} {old_s:>7.1f} {v2_s:>6.1f} {new_s:>7.1f} {scipy_s:>8.1f} {old_s / new_s:>11.1f}x {v2_s / new_s:>6.1f}x "
              f"{old_mse:>9.5f} {v2_mse:>9.5f} {new_mse:>9.5f} {scipy_mse:>9.5f} {new_mse / old_mse:>8.3f} "
              f"{new_mse / v2_mse:>7.3f} {new_mse / scipy_mse:>9.3f}", flush=True)


if __name__ == "__main__":
    main()
