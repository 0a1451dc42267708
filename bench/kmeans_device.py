"""The k-means reference on the CPU (faiss, one thread) against the same algorithm on a GPU, side by
side in one run, on the eval sets the synthetic distortion ratio uses (issue #14, P6: a full-tier
job's reference ran on one CPU thread while the GPU idled).

For each task: time and objective (MSE per element) of `vqbench.kmeans.kmeans(..., n_init=1)` on
the CPU and on CUDA, the time ratio (CPU / GPU) and the objective ratio (GPU / CPU). The CPU run is
skipped above --cpu-max-work (n x K; at the full tier's sizes it takes hours).
Usage: python bench/kmeans_device.py [--tasks 'synthetic/codebook-scaling@codebook_size=16384' ...]
                                     [--cpu-max-work 2e9]
"""
from __future__ import annotations

import argparse
import time

import torch

from vqbench.families import get_family
from vqbench.kmeans import kmeans
from vqbench.tasks import list_tasks

DEFAULT_TASKS = ["synthetic/codebook-scaling@codebook_size=4096", "synthetic/codebook-scaling@codebook_size=16384",
                 "synthetic/codebook-scaling-full@codebook_size=16384", "synthetic/codebook-scaling-full@codebook_size=65536",
                 "synthetic/codebook-scaling-full@codebook_size=262144"]


def timed(x: torch.Tensor, k: int, device: str) -> tuple[float, float]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    _, mse = kmeans(x, k, n_init=1, device=device)
    sync()
    return time.perf_counter() - start, mse


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", action="append", default=None)
    parser.add_argument("--cpu-max-work", type=float, default=2e9, help="skip the CPU above n x K")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    if cuda:  # the first CUDA call pays for the context: not the algorithm's time
        kmeans(torch.randn(4096, 8), 64, n_init=1, device="cuda")
    print("| task | n x d | K | CPU s | GPU s | CPU / GPU time | CPU objective | GPU objective | GPU / CPU objective |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for task in list_tasks(args.tasks or DEFAULT_TASKS):
        x = get_family(task.family).build(task, 0, torch.device("cpu")).metric_context["eval_set"]
        k = task.quantizer.codebook_size
        cpu = timed(x, k, "cpu") if x.shape[0] * k <= args.cpu_max_work else None
        gpu = timed(x, k, "cuda") if cuda else None
        cells = [f"{cpu[0]:.1f}" if cpu else "skipped", f"{gpu[0]:.2f}" if gpu else "no GPU",
                 f"x{cpu[0] / gpu[0]:.1f}" if cpu and gpu else "-", f"{cpu[1]:.5f}" if cpu else "-",
                 f"{gpu[1]:.5f}" if gpu else "-", f"{gpu[1] / cpu[1]:.4f}" if cpu and gpu else "-"]
        print(f"| {task.id} | {x.shape[0]:,} x {x.shape[1]} | {k:,} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
