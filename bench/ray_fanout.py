"""Ray fan-out speed (issue #14, goal P3): the same jobs through `vqbench run` with the serial executor,
Ray with 1 worker and Ray with 2 workers, side by side, plus `vqbench run` with nothing left to run.

Each configuration is a whole `vqbench run` (driver start, Ray start, workers, jobs) into a throwaway
results folder; one repeat runs all three, the order rotating from repeat to repeat so machine noise
hits each alike. Prints wall times and ratios (> 1: the first is faster), medians over repeats, and
checks that every configuration gave the same metrics, bit for bit.

`--ceiling` adds what the machine itself allows: the same jobs with no Ray and no driver at all,
`vqbench.job.run_contained` called directly by one process (all jobs) and by two processes at once
(each taking the next unclaimed job, as Ray's workers do); "2 processes vs 1" is the speed-up two cores give this workload, the bound
for "2 workers vs 1" (shared caches and memory bandwidth, the VM's scheduling).
Usage: python bench/ray_fanout.py [--submission simvq --tasks GLOB ... --seeds 0,1 --repeats 3 --ceiling]
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

RATIOS = [("2 workers vs 1 (goal >= 1.8)", "ray-1", "ray-2"), ("2 processes vs 1 (ceiling)", "bare-1", "bare-2"),
          ("2 workers vs machine ceiling", "bare-2", "ray-2"), ("ray 1 worker vs serial", "serial", "ray-1"),
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


def bare_jobs(args, claims: Path) -> None:
    """Child of --ceiling: the jobs through run_contained, nothing else; a job is taken by whichever
    process first creates its claim file in `claims`."""
    from vqbench.job import run_contained
    from vqbench.paths import project_root
    from vqbench.runner import plan
    from vqbench.submissions import get_submission
    from vqbench.tasks import list_tasks

    with tempfile.TemporaryDirectory() as tmp:
        jobs, _ = plan([get_submission(args.submission)], list_tasks(args.tasks, "lite"),
                       [int(s) for s in args.seeds.split(",")], Path(tmp), force=True)
    for i, job in enumerate(jobs):
        try:
            os.close(os.open(claims / f"job-{i}", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        result = run_contained(job.submission, job.task, job.seed, project_root(), "serial", 3600)
        if result["status"] != "ok":
            sys.exit(f"{job.label} failed: {result['error']['reason']}")


def bare_run(args, parts: int) -> float:
    """Wall time of `parts` processes running the jobs between them, all at once."""
    cmd = [sys.executable, __file__, "--submission", args.submission, "--seeds", args.seeds]
    for glob in args.tasks:
        cmd += ["--tasks", glob]
    with tempfile.TemporaryDirectory() as claims:
        start = time.perf_counter()
        procs = [subprocess.Popen([*cmd, "--bare-claims", claims], env={"OMP_NUM_THREADS": "1", **os.environ})
                 for _ in range(parts)]
        if any(p.wait() != 0 for p in procs):
            sys.exit("a --ceiling process failed")
        return time.perf_counter() - start


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
    parser.add_argument("--ceiling", action="store_true", help="also time 1 and 2 bare processes (no Ray, no driver)")
    parser.add_argument("--bare-claims", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.tasks = args.tasks or DEFAULT_TASKS
    if args.bare_claims:
        return bare_jobs(args, Path(args.bare_claims))
    configs = [name for name in CONFIGS if name in args.configs.split(",")]
    bare = ["bare-1", "bare-2"] if args.ceiling else []
    times: dict[str, list[float]] = {name: [] for name in [*configs, *bare, "zero jobs (ray)"]}
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
            for name in bare[rep % max(1, len(bare)):] + bare[:rep % max(1, len(bare))]:
                times[name].append(bare_run(args, int(name[-1])))
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
