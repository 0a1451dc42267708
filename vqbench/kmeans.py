"""A strong k-means optimum: the reference distortion that synthetic probes report ratios against.

k-means++ seeding (Arthur & Vassilvitskii 2007), Lloyd iterations to convergence, empty clusters
re-seeded at the worst-served points, best of `n_init` restarts. The result is cached on disk by
a key covering data and K, under a file lock so parallel jobs compute it once.
"""
from __future__ import annotations

import fcntl
import json

import torch
from torch import Tensor

from vqbench.cache import read_verified, write_verified
from vqbench.ops import nearest_code
from vqbench.paths import cache_home


@torch.no_grad()
def kmeans_plus_plus(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    n = x.shape[0]
    centers = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    centers[0] = x[torch.randint(n, (1,), generator=gen, device=x.device)]
    dist = ((x - centers[0]) ** 2).sum(1)
    for i in range(1, k):
        probs = dist / dist.sum() if dist.sum() > 0 else torch.full_like(dist, 1.0 / n)
        centers[i] = x[torch.multinomial(probs, 1, generator=gen)]  # stays on device: no sync per centre
        dist = torch.minimum(dist, ((x - centers[i]) ** 2).sum(1))
    return centers


@torch.no_grad()
def lloyd(x: Tensor, centers: Tensor, max_iters: int = 100, tol: float = 1e-5) -> tuple[Tensor, float]:
    k = centers.shape[0]
    previous = float("inf")
    for _ in range(max_iters):
        assign, dist = nearest_code(x, centers)
        mse = float(dist.sum()) / x.numel()
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        centers = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):  # re-seed at the points with the largest error
            m = min(len(empty), x.shape[0])
            centers[empty[:m]] = x[dist.topk(m).indices]
        elif previous - mse <= tol * previous:
            break
        previous = mse
    _, dist = nearest_code(x, centers)
    return centers, float(dist.sum()) / x.numel()


@torch.no_grad()
def quick_kmeans(x: Tensor, k: int, iters: int = 10) -> Tensor:
    """A codebook init (SoundStream): k random rows (global RNG, with replacement when n < k), then
    `iters` Lloyd steps. Cheap enough to run inside a training step; not the strong reference."""
    x = x.reshape(-1, x.shape[-1]).float()
    n = x.shape[0]
    pick = torch.randperm(n, device=x.device)[:k] if n >= k else torch.randint(n, (k,), device=x.device)
    return lloyd(x, x[pick].clone(), max_iters=iters, tol=0.0)[0]


def kmeans(x: Tensor, k: int, n_init: int = 3, seed: int = 0, max_iters: int = 100) -> tuple[Tensor, float]:
    """Best-of-`n_init` k-means; returns (centers, mean squared error per element)."""
    x = x.reshape(-1, x.shape[-1]).float()
    if k >= x.shape[0]:
        return x.clone(), 0.0
    gen = torch.Generator(device=x.device).manual_seed(seed)
    best = (None, float("inf"))
    for _ in range(n_init):
        centers, mse = lloyd(x, kmeans_plus_plus(x, k, gen), max_iters)
        if mse < best[1]:
            best = (centers, mse)
    return best


def cached_kmeans_mse(x: Tensor, k: int, key: str, n_init: int = 3) -> float:
    """k-means MSE of `x` with `k` centres, computed once per `key` (which must cover x and k) and
    cached with its digest (vqbench.cache): a file that fails verification is recomputed."""
    folder = cache_home() / "kmeans"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}-k{k}-n{n_init}.json"
    with open(folder / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second job of the same task waits, then reads
        if (data := read_verified(path)) is not None:
            entry = json.loads(data)
            if (entry.get("k"), entry.get("n"), entry.get("n_init")) == (k, x.shape[0], n_init):
                return entry["mse"]
        _, mse = kmeans(x, k, n_init=n_init)
        write_verified(path, json.dumps({"mse": mse, "k": k, "n": x.shape[0], "n_init": n_init}).encode())
        return mse
