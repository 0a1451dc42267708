"""Ray fan-out speed (issue #14, goal P3): the same jobs through `vqbench run` with the serial executor,
Ray with 1 worker and Ray with 2 workers, side by side, plus `vqbench run` with nothing left to run.

Each configuration is a whole `vqbench run` (driver start, Ray start, workers, jobs) into a throwaway
results folder; one repeat runs all three, the order rotating from repeat to repeat so machine noise
hits each alike. Prints wall times and ratios (> 1: the first is faster), medians over repeats, and
checks that every configuration gave the same metrics, bit for bit.
Usage: python bench/ray_fanout.py [--submission simvq --tasks GLOB ... --seeds 0,1 --repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_TASKS = ["synthetic/codebook-scaling@codebook_size=256", "synthetic/codebook-scaling@codebook_size=1024",
                 "synthetic/code-dim@*"]
CONFIGS = {"serial": ["--executor", "serial"], "ray-1": ["--executor", "ray", "--workers", "1"],
           "ray-2": ["--executor", "ray", "--workers", "2"]}

RATIOS = [("2 workers vs 1 (goal >= 1.8)", "ray-1", "ray-2"), ("ray 1 worker vs serial", "serial", "ray-1"),
          ("ray 2 workers vs serial", "serial", "ray-2")]


def vqbench_run(args, results: Path, extra: list[str], seeds: str) -> float:
    """Wall time of one `vqbench run`; exits when it fails (a failed job would make the times meaningless)."""
    cmd = [sys.executable, "-m", "vqbench.cli", "run", "--submission", args.submission, "--seeds", seeds,
           "--results-dir", str(results), "--quiet", *extra]
    for glob in args.tasks:
        cmd += ["--tasks", glob]
    start = time.perf_counter()
    out = subprocess.run(cmd, env={"RAY_AUTH_MODE": "disabled", **os.environ}, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return elapsed


def metrics_of(results: Path) -> dict:
    return {str(p.relative_to(results)): json.loads(p.read_text())["metrics"] for p in sorted(results.rglob("seed-*.json"))}


def show(name: str, times: list[float]) -> None:
    print(f"  {name:28s} {statistics.median(times):7.1f} s   (runs: {', '.join(f'{t:.1f}' for t in times)})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--submission", default="simvq")
    parser.add_argument("--tasks", action="append", help=f"task glob, repeatable (default: {DEFAULT_TASKS})")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {list(CONFIGS)}")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the untimed serial run of seed 0 that fills the k-means cache ($VQBENCH_HOME)")
    args = parser.parse_args()
    args.tasks = args.tasks or DEFAULT_TASKS
    configs = [name for name in CONFIGS if name in args.configs.split(",")]
    times: dict[str, list[float]] = {name: [] for name in [*configs, "zero jobs (ray)"]}
    metrics: dict[str, dict] = {}
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    with tempfile.TemporaryDirectory(prefix="vqbench-fanout-") as tmp:
        if not args.no_warmup:
            vqbench_run(args, Path(tmp) / "warmup", CONFIGS["serial"], args.seeds.split(",")[0])
        for rep in range(args.repeats):
            names = configs[rep % len(configs):] + configs[:rep % len(configs)]
            for name in names:
                results = Path(tmp) / f"{name}-{rep}"
                times[name].append(vqbench_run(args, results, CONFIGS[name], args.seeds))
                metrics[f"{name}-{rep}"] = metrics_of(results)
                print(f"  repeat {rep}: {name} {times[name][-1]:.1f} s", flush=True)
            times["zero jobs (ray)"].append(vqbench_run(args, results, CONFIGS["ray-2"], args.seeds))
    jobs = len(next(iter(metrics.values())))
    same = all(m == next(iter(metrics.values())) for m in metrics.values())
    print(f"{args.submission} on {' '.join(args.tasks)}, seeds {args.seeds}: {jobs} jobs per run, "
          f"median of {args.repeats}; load average {os.getloadavg()[0]:.2f} at end")
    for name, ts in times.items():
        show(name, ts)
    for label, base, other in [r for r in RATIOS if r[1] in times and r[2] in times]:
        rs = [a / b for a, b in zip(times[base], times[other])]
        print(f"  {label:28s} x{statistics.median(rs):.2f}   ({base} / {other}; runs: {', '.join(f'{r:.2f}' for r in rs)})")
    print(f"  metrics identical across every run and executor: {'yes' if same else 'NO'}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
