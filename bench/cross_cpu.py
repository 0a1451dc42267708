"""How far a committed result moves on another CPU kind: the tolerance vqbench.trust uses, measured.

A CPU result is a deterministic function of the code, the seed, the packages and the kernels the
CPU kind selects (ATen's vector width, MKL's and oneDNN's code paths, faiss's SIMD level and its
OpenBLAS core type). This machine can run each of those at a lower level, so one machine measures
what a different CPU kind changes: a random sample of the committed results (fixed seed) is rerun,
serially, through the real runner under each kernel setting below, and every metric is compared
with the committed value. "native" must give difference 0 (same kind); the others give the
cross-kind spread, printed per metric as the largest relative difference, beside the spread
between seeds of the same results (what the leaderboard's ± shows) for scale.

Not covered: other microarchitectures at the same level (e.g. Intel vs AMD AVX-512, whose MKL
paths may differ), GPUs, other package builds. Usage:
    python bench/cross_cpu.py [--per-submission 2] [--tasks 'synthetic/*'] [--submissions 'vq,simvq']
                              [--kinds native,avx2,sse] [--json out.json]
(image jobs take about 6 min each here: `--tasks 'image/*' --per-submission 1 --submissions vq,simvq`)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

KINDS = {  # environment that makes this CPU run the kernels another kind would
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "FAISS_SIMD_LEVEL": "AVX2", "OPENBLAS_CORETYPE": "Haswell"},
    "sse": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41",
            "FAISS_SIMD_LEVEL": "NONE", "OPENBLAS_CORETYPE": "Nehalem"},
}


def committed_sample(tasks_glob: list[str], per_submission: int, seed: int,
                     submissions: list[str] | None = None) -> list[tuple[str, str, int]]:
    """(submission, task, seed) of `per_submission` current successful committed results each."""
    from vqbench.paths import project_root
    from vqbench.submissions import get_submission, list_submissions
    from vqbench.tasks import list_tasks
    from vqbench.validate import current_results

    tasks = {t.id for t in list_tasks(tasks_glob)}
    rng, picked = random.Random(seed), []
    for name in submissions or list_submissions():
        current = [(name, task.id, s) for _, task, s, _ in
                   current_results(get_submission(name), project_root() / "results", project_root()) if task.id in tasks]
        picked += rng.sample(sorted(current), min(per_submission, len(current)))
    return picked


def rerun(sample: list, out: Path) -> None:
    """Child: the sample through the serial runner into `out` (one process, its own kernel setting)."""
    from vqbench.paths import project_root
    from vqbench.results import cpu_kind
    from vqbench.runner import Job, run
    from vqbench.submissions import get_submission
    from vqbench.tasks import get_task

    jobs = [Job(get_submission(s), get_task(t), seed) for s, t, seed in sample]
    summary = run(jobs, project_root(), out, "serial", show_progress=False)
    for r in summary.failed:
        print(f"FAILED {r['submission']} {r['task']} seed {r['seed']}: {r['error']['reason']}", file=sys.stderr)
    (out / "kind.json").write_text(json.dumps(cpu_kind()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-submission", type=int, default=2)
    parser.add_argument("--tasks", action="append")
    parser.add_argument("--submissions", help="comma-separated names (default: every registered submission)")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--seed", type=int, default=0, help="draws the sample")
    parser.add_argument("--json", help="write the per-metric figures here")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return rerun(json.loads(Path(args.child[0]).read_text()), Path(args.child[1]))
    from vqbench.paths import project_root
    from vqbench.results import read_result, result_path

    sample = committed_sample(args.tasks or ["synthetic/*"], args.per_submission, args.seed,
                              args.submissions.split(",") if args.submissions else None)
    results = project_root() / "results"
    rel = defaultdict(lambda: defaultdict(list))  # kind -> metric -> relative differences
    with tempfile.TemporaryDirectory(prefix="vqbench-cross-cpu-") as tmp:
        (Path(tmp) / "sample.json").write_text(json.dumps(sample))
        for kind in args.kinds.split(","):
            out = Path(tmp) / kind
            subprocess.run([sys.executable, __file__, "--child", str(Path(tmp) / "sample.json"), str(out)],
                           env={**os.environ, **KINDS[kind]}, check=True)
            print(f"{kind}: {json.loads((out / 'kind.json').read_text())}", flush=True)
            for s, t, seed in sample:
                a, b = read_result(result_path(results, s, t, seed)), read_result(result_path(out, s, t, seed))
                if not b or b["status"] != "ok":
                    rel[kind]["(failed reruns)"].append(1.0)
                    continue
                for m, va in a["metrics"].items():
                    vb = b["metrics"].get(m)
                    if va is not None and vb is not None:
                        rel[kind][m].append(abs(vb - va) / max(abs(va), 1e-12))
    seed_spread = defaultdict(list)  # relative std over the committed seeds of the sampled (submission, task)
    for s, t in {(s, t) for s, t, _ in sample}:
        runs = [r for p in (results / s / t).glob("seed-*.json") if (r := read_result(p)) and r["status"] == "ok"]
        for m in runs[0]["metrics"] if len(runs) > 1 else []:
            vals = [r["metrics"].get(m) for r in runs]
            if None not in vals and abs(statistics.fmean(vals)) > 1e-12:
                seed_spread[m].append(statistics.stdev(vals) / abs(statistics.fmean(vals)))
    kinds = list(rel)
    metrics = sorted({m for k in kinds for m in rel[k]})
    print(f"\n{len(sample)} committed results rerun per kind; largest relative difference from the committed value "
          f"(median in brackets); seed spread: median relative std over seeds")
    print(f"{'metric':<24}" + "".join(f"{k:>22}" for k in kinds) + f"{'seed spread':>14}")
    summary = {}
    for m in metrics:
        cells = []
        for k in kinds:
            v = rel[k].get(m, [])
            cells.append(f"{max(v):>12.2e} ({statistics.median(v):.1e})" if v else f"{'-':>22}")
        spread = statistics.median(seed_spread[m]) if seed_spread.get(m) else float("nan")
        print(f"{m:<24}" + "".join(f"{c:>22}" for c in cells) + f"{spread:>14.2e}")
        summary[m] = {"max_rel": {k: max(rel[k][m]) for k in kinds if rel[k].get(m)},
                      "median_rel": {k: statistics.median(rel[k][m]) for k in kinds if rel[k].get(m)},
                      "seed_spread_rel": spread}
    if args.json:
        Path(args.json).write_text(json.dumps({"sample": sample, "metrics": summary}, indent=1))


if __name__ == "__main__":
    main()
