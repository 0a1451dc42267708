"""What a job's three-stage split costs: per-phase wall times of real lite jobs through the runner.

A job is train+encode (confined), decode from the snapshot (confined), score (harness only). The
work a one-process job would also do is setup + train + encode + reference + metrics; everything
else (process starts, confinement, shipping the snapshot and codes, the second setup) is the
split's overhead, printed as a share of the job's wall time, per job and over all jobs (the
first job of a driver or Ray worker also pays for starting its fork server). Usage:
    python bench/job_overhead.py [--submission vq] [--tasks 'synthetic/codebook-scaling@codebook_size=256' ...]
                                 [--executor serial|ray] [--workers 2]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from vqbench.paths import project_root
from vqbench.runner import plan, run
from vqbench.submissions import get_submission
from vqbench.tasks import list_tasks

WORK = ("setup", "train", "encode", "reference", "metrics")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--submission", default="vq")
    parser.add_argument("--tasks", action="append", default=None)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--executor", default="serial", choices=["serial", "ray"])
    parser.add_argument("--workers", type=int, default=None, help="Ray workers (default: one per core)")
    args = parser.parse_args()
    tasks = list_tasks(args.tasks or ["synthetic/codebook-scaling@codebook_size=256", "synthetic/code-dim@dim=16"], "lite")
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        jobs, _ = plan([get_submission(args.submission)], tasks, seeds, Path(tmp), force=True)
        summary = run(jobs, project_root(), Path(tmp), args.executor, workers=args.workers,
                      show_progress=False)
    rows = []
    for r in summary.done:
        phases, wall = r["provenance"]["phases"], r["provenance"]["wall_time_s"]
        overhead = wall - sum(phases.get(k, 0.0) for k in WORK)
        rows.append((r["task"], r["seed"], wall, overhead, overhead / wall))
        print(f"{r['task']:<55} seed {r['seed']}  wall {wall:6.2f} s  overhead {overhead:5.2f} s "
              f"({overhead / wall:5.1%})  " + "  ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    for r in summary.failed:
        print(f"FAILED {r['task']} seed {r['seed']}: {r['error']['reason']}")
    if rows:
        print(f"median overhead share: {statistics.median(r[4] for r in rows):.1%} of the job's wall time "
              f"(median overhead {statistics.median(r[3] for r in rows):.2f} s)")
        print(f"all {len(rows)} jobs ({args.executor}): overhead {sum(r[3] for r in rows):.1f} s of "
              f"{sum(r[2] for r in rows):.1f} s job wall time ({sum(r[3] for r in rows) / sum(r[2] for r in rows):.1%})")


if __name__ == "__main__":
    main()
