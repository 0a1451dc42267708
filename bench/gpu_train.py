"""Does a single job keep a GPU busy? The shared training loop (vqbench.train) timed on one task,
with the loop's GPU fixes switched on one at a time, interleaved in one process (issue #14, P6).

Variants, each adding one fix to the one before:
  before        the loop as it was: 2^20-distance search chunks, per-step range/finite checks read on
                the host, quantizers' usage logs read as floats every step, batches copied from
                pageable memory on the training thread
  +chunks       the torch search's chunk budget for CUDA (vqbench.ops.TORCH_SEARCH_BUDGET)
  +checks       per-step checks kept on the device, read at curve points (vqbench.train.StepChecks)
  +logs         usage logs as 0-d tensors (vqbench.ops.usage_metrics)
  +prefetch     batches made ahead by a thread, pinned, copied without blocking (families.to_device)
Printed per variant: training steps per second (median over repeats, after warm-up steps), the ratio
to `before`, and the GPU's busy share (NVML utilization, sampled every 20 ms in the timed window).
Usage (a GPU machine; on CPU it only checks that it runs):
    python bench/gpu_train.py [--task 'synthetic/codebook-scaling-full@codebook_size=16384'] [--submission simvq]
                              [--steps 200] [--warmup 20] [--repeats 3]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import threading
import time

import torch

import vqbench.families as families
import vqbench.ops as ops
import vqbench.train as train_module
from vqbench.families import get_family
from vqbench.submissions import get_submission
from vqbench.tasks import list_tasks

VARIANTS = ["before", "+chunks", "+checks", "+logs", "+prefetch"]


@torch.no_grad()
def usage_metrics_before(idx, num_codes):
    """vqbench.ops.usage_metrics as it was: two host reads per call."""
    counts = torch.bincount(idx.flatten(), minlength=num_codes).double()
    p = counts[counts > 0] / counts.sum()
    return {"perplexity": float(torch.exp(-(p * p.log()).sum())), "used": float((counts > 0).sum()) / num_codes}


class ChecksEveryStep(train_module.StepChecks):
    def __init__(self, device, codebook_size):
        super().__init__(device, codebook_size)
        self.every_step = True


def configure(variant: str, quantizer_module) -> None:
    """Switch the fixes up to `variant` on, the rest off (module attributes the loop reads)."""
    level = VARIANTS.index(variant)
    ops.TORCH_SEARCH_BUDGET["cuda"] = 2 ** 26 if level >= 1 else 2 ** 20
    train_module.StepChecks = REAL_CHECKS if level >= 2 else ChecksEveryStep
    quantizer_module.usage_metrics = REAL_USAGE if level >= 3 else usage_metrics_before
    families.to_device = REAL_TO_DEVICE if level >= 4 else (lambda b, d: (x.to(d) for x in b))
    for name, module in list(sys.modules.items()):  # the families imported to_device by name
        if name.startswith("vqbench.families.") and hasattr(module, "to_device"):
            module.to_device = families.to_device


REAL_CHECKS, REAL_USAGE, REAL_TO_DEVICE = train_module.StepChecks, ops.usage_metrics, families.to_device


class BusySampler:
    """NVML's GPU utilization (share of the last sample period with a kernel running), polled."""

    def __init__(self):
        try:
            import pynvml
            pynvml.nvmlInit()
            self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        except Exception:  # no NVML (CPU, or the package missing): report no busy share
            self.nvml = None
        self.samples: list[float] = []
        self.running = False

    def __enter__(self):
        if self.nvml:
            self.running, self.samples = True, []
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        return self

    def _poll(self):
        while self.running:
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            time.sleep(0.02)

    def __exit__(self, *exc):
        if self.nvml:
            self.running = False
            self.thread.join()

    @property
    def busy(self) -> float | None:
        return statistics.mean(self.samples) / 100 if self.samples else None


def time_variant(variant: str, submission, task, steps: int, warmup: int, device: torch.device):
    quantizer = submission.build(task.quantizer.dim, task.quantizer.codebook_size)
    configure(variant, sys.modules[type(quantizer).__module__])
    train_module.seed_everything(0)
    setup = get_family(task.family).build(task, 0, device)
    quantizer.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    short = dataclasses.replace(task, train=dataclasses.replace(task.train, steps=warmup))
    train_module.train(setup, [quantizer], short)  # warm-up: allocator, cuBLAS handles, prefetch thread
    timed = dataclasses.replace(task, train=dataclasses.replace(task.train, steps=steps))
    sync()
    with BusySampler() as sampler:
        start = time.perf_counter()
        log = train_module.train(setup, [quantizer], timed)
        sync()
        elapsed = time.perf_counter() - start
    return steps / elapsed, sampler.busy, log["final_reconstruction_loss"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="synthetic/codebook-scaling-full@codebook_size=16384")
    parser.add_argument("--submission", default="simvq")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per variant and repeat")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    [task] = list_tasks(args.task)
    submission = get_submission(args.submission)
    variants = args.variants.split(",")
    rates: dict[str, list[float]] = {v: [] for v in variants}
    busy: dict[str, list[float]] = {v: [] for v in variants}
    print(f"{args.submission} on {task.id}, {device} "
          f"({torch.cuda.get_device_name() if device.type == 'cuda' else 'no GPU'}), torch {torch.__version__}")
    for repeat in range(args.repeats):
        order = variants[repeat % len(variants):] + variants[:repeat % len(variants)]  # rotate the order
        for variant in order:
            rate, share, loss = time_variant(variant, submission, task, args.steps, args.warmup, device)
            rates[variant].append(rate)
            if share is not None:
                busy[variant].append(share)
            print(f"  repeat {repeat} {variant:<10} {rate:8.1f} steps/s  busy "
                  f"{'-' if share is None else f'{share:.0%}'}  final loss {loss:.4f}", flush=True)
    base = statistics.median(rates[variants[0]])
    print(f"\n| variant | steps/s (median of {args.repeats}) | vs {variants[0]} | GPU busy (NVML) |")
    print("| --- | --- | --- | --- |")
    for v in variants:
        share = f"{statistics.median(busy[v]):.0%}" if busy[v] else "-"
        print(f"| {v} | {statistics.median(rates[v]):.1f} | x{statistics.median(rates[v]) / base:.2f} | {share} |")


if __name__ == "__main__":
    main()
