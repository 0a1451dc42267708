"""`vqbench validate`: is a submission fit to run? Each check is reported pass/fail with why.

1. schema (submission.yaml) and a source scan for reaching into the harness;
2. import, in a child process with a time limit;
3. contract checks (vqbench.checks, shared with tests/test_contract.py), in a child process
   with a time limit: shapes and dtypes, codes in [0, K), gradient, decode(codes) == z_q in eval
   mode, decode a pure per-token function of codes that ignores what forward() saw, edge inputs,
   determinism, state_dict round trip, rate within the task's budget;
4. a smoke run of a tiny task through the real runner (serial executor, sandbox, guard, the
   rate-enforcing evaluation), into a throwaway results folder;
5. with --reproduce, committed results rerun and compared metric by metric: one, or (--sample N) N
   drawn at random when the command runs, within vqbench.trust's measured tolerance; --record
   enters each one reproduced in the ledger of trusted results (maintainers, on main).

The smoke task lives in the package (vqbench/smoke_tasks/), not in tasks/: it is part of the
harness's self-test, not of the benchmark, so no `--tasks` glob, tier or leaderboard ever sees it.
"""
from __future__ import annotations

import ast
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vqbench.checks import CONTRACT_CHECKS, builder
from vqbench.contract import PUBLIC_MODULES
from vqbench.enforce import JobFailure
from vqbench.families import get_family
from vqbench.metrics import METRICS
from vqbench.results import iter_results, machine_kind, why_stale
from vqbench.sandbox import Guard, protected_folders, run_in_child, tamper_reason
from vqbench.schema import ConfigError
from vqbench.submissions import Submission, get_submission
from vqbench.trust import LEDGER, checkable, draw_sample, record, same_cpu_kind, tolerance, within

SMOKE_TASK = next((Path(__file__).parent / "smoke_tasks").glob("*/smoke.yaml"))  # smoke_tasks/<family>/
IMPORT_TIMEOUT_S = 60.0
CHECKS_TIMEOUT_S = 180.0
CHECKS_MEMORY_GB = 1.0  # the checks use tensors of kilobytes; a quantizer that needs more is broken
SUSPECT_MODULES = ("gc", "inspect", "ctypes")  # reach into other objects' memory or frames
SOURCE_CHECK = (f"source: imports only the public API ({', '.join(m.removeprefix('vqbench') or 'vqbench' for m in PUBLIC_MODULES)})"
                f"; no {'/'.join(SUSPECT_MODULES)}/frames")


# ---------------------------------------------------------------- the child processes' side

def _import_in_child(submission: Submission, emit) -> str:
    return submission.quantizer_class().__name__


def import_problem(submission: Submission, root: Path, results_dir: Path | None = None) -> str | None:
    """Why the submission cannot be imported (in a contained child: its import-time code never runs
    in the driver), or None. Import-time writes into protected folders are undone and reported."""
    guard = Guard(protected_folders(root, results_dir))
    outcome = run_in_child(_import_in_child, (submission,), IMPORT_TIMEOUT_S, CHECKS_MEMORY_GB, confined=True)
    if changed := guard.check():
        return tamper_reason(changed)
    return outcome.failure.removeprefix("ConfigError: ") if outcome.failure else None


def _checks_in_child(submission: Submission, dim: int, k: int, emit) -> None:
    build = builder(submission, dim, k)
    for title, check in CONTRACT_CHECKS:
        emit(["start", title])
        start = time.perf_counter()
        try:
            detail, ok = check(build, dim, k), True
        except (JobFailure, ConfigError) as e:
            detail, ok = str(e), False
        except Exception as e:  # the submission's own error inside a check
            detail, ok = f"{type(e).__name__}: {e}", False
        emit(["end", title, ok, f"{detail} ({time.perf_counter() - start:.1f} s)" if ok else detail])


# ---------------------------------------------------------------- the report

@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


def scan_source(submission: Submission) -> list[str]:
    """Imports and names that reach into the harness or other objects' memory: a submission that
    patches vqbench.train or walks gc to find the eval data runs with the harness's own powers,
    which no runtime check can take back, so it is refused before it runs."""
    problems = []
    for path in sorted(submission.folder.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(), str(path))
        except SyntaxError as e:
            problems.append(f"{path.name}:{e.lineno}: syntax error: {e.msg}")
            continue
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if (top == "vqbench" and name not in PUBLIC_MODULES) or top in SUSPECT_MODULES:
                    problems.append(f"{path.name}:{node.lineno}: imports {name}")
            if isinstance(node, ast.Attribute) and (node.attr in ("__code__", "__globals__") or (
                    node.attr in ("_getframe", "modules") and isinstance(node.value, ast.Name) and node.value.id == "sys")):
                problems.append(f"{path.name}:{node.lineno}: uses .{node.attr}")
            if isinstance(node, ast.Name) and node.id == "__import__":
                problems.append(f"{path.name}:{node.lineno}: uses __import__")
    return problems


def files_check(guard: Guard) -> Check:
    changed = guard.check()
    return Check("files: the contract checks wrote nothing into results/, submissions/, tasks/, "
                 "leaderboard/", not changed, tamper_reason(changed) if changed else "ok")


def smoke_task():
    from vqbench.tasks import load_task_file
    return load_task_file(SMOKE_TASK, SMOKE_TASK.parents[1])[0]


def _run_one(submission: Submission, task, seed: int, root: Path, results_dir: Path, timeout_s: float | None) -> dict:
    from vqbench.runner import Job, run
    summary = run([Job(submission, task, seed)], root, results_dir, "serial", timeout_s=timeout_s,
                  show_progress=False)
    return (summary.done + summary.failed)[0]


def current_results(submission: Submission, results_dir: Path, root: Path, task_id: str | None = None,
                    seed: int | None = None) -> list[tuple[Path, object, int, dict]]:
    """The committed, current, successful results of the submission: (path, task, seed, result)."""
    from vqbench.tasks import load_registry
    registry = load_registry(root)
    found = []
    for path, result in iter_results(Path(results_dir) / submission.name):
        if not result or result.get("status") != "ok":
            continue
        task = registry.get(result.get("task"))
        if task is None or why_stale(result, submission.hash, task.hash):
            continue
        if (task_id is None or task.id == task_id) and (seed is None or result.get("seed") == seed):
            found.append((path, task, result["seed"], result))
    return found


def compare_metrics(committed: dict, rerun: dict, same_kind: bool = True) -> tuple[bool, list[str]]:
    """Per metric: committed, rerun, difference; ok when each is within vqbench.trust's tolerance
    (rounding on the same CPU kind, the measured cross-kind spread on another)."""
    lines, ok = [], True
    for name in sorted(set(committed) | set(rerun)):
        a, b = committed.get(name), rerun.get(name)
        if a is None or b is None:
            same = a is None and b is None
            lines.append(f"{name}: committed {a}, rerun {b}{'' if same else '  MISMATCH'}")
        else:
            same = within(name, a, b, same_kind)
            rel = abs(a - b) / max(abs(a), 1e-300)
            rtol, atol = tolerance(name, same_kind)
            lines.append(f"{name}: committed {a:.9g}, rerun {b:.9g}, difference {b - a:.3g} (rel {rel:.2g}, "
                         f"allowed rel {rtol:.2g} or abs {atol:.2g}){'' if same else '  MISMATCH'}")
        ok &= same
    return ok, lines


def reproduce(submission: Submission, root: Path, results_dir: Path, task_id: str | None, seed: int | None,
              timeout_s: float | None, sample: int | None = None, sample_seed: int | None = None,
              record_confirmed: bool = False) -> list[Check]:
    """Rerun committed results and compare them metric by metric: one (the given task/seed, or the
    first found), or with `sample`, that many drawn at random (vqbench.trust.draw_sample). With
    `record_confirmed`, each one reproduced within tolerance is entered in the ledger."""
    found = current_results(submission, results_dir, root, task_id, seed)
    if not found:
        want = f"task {task_id!r}" if task_id else "any task"
        return [Check("reproduce a committed result", False,
                      f"no current successful result of {want}{f' seed {seed}' if seed is not None else ''} "
                      f"under {Path(results_dir) / submission.name} (run it first, or commit its results)")]
    checks = []
    if sample is None:
        picked, note = found[:1], ""
    else:
        # A result from another CPU kind with a metric whose cross-kind spread was never measured
        # cannot be judged here (exact equality would fail honest work): it is not drawn, and said.
        here = machine_kind(submission.package_versions())
        judged = [f for f in found if checkable(f[3]["provenance"], f[3]["metrics"], here)]
        if skipped := len(found) - len(judged):
            checks.append(Check(f"reproduce: {skipped} of {len(found)} results not drawn", True,
                                "committed on another CPU kind (or unrecorded) with metrics whose cross-kind spread "
                                "is not measured (docs/trust.md): only a rerun on their own kind can judge them; "
                                "they stay self-reported until a trusted run produces or reproduces them"))
        if not judged:
            return checks
        picked, used = draw_sample(judged, sample, sample_seed)
        note = f" ({len(picked)} of {len(judged)} drawn with --sample-seed {used})"
    for path, task, run_seed, committed in picked:
        checks.append(_reproduce_one(submission, root, results_dir, path, task, run_seed, committed, timeout_s,
                                     record_confirmed, note))
    return checks


def _reproduce_one(submission: Submission, root: Path, results_dir: Path, path: Path, task, seed: int,
                   committed: dict, timeout_s: float | None, record_confirmed: bool, note: str) -> Check:
    name = f"reproduce {task.id} seed {seed}{note}"
    with tempfile.TemporaryDirectory(prefix="vqbench-reproduce-") as tmp:
        rerun = _run_one(submission, task, seed, root, Path(tmp), timeout_s)
    if rerun["status"] != "ok":
        return Check(name, False, f"the rerun failed: {rerun['error']['reason']}")
    prov_a, prov_b = committed["provenance"], rerun["provenance"]
    same_kind = same_cpu_kind(prov_a, prov_b)
    ok, lines = compare_metrics(committed["metrics"], rerun["metrics"], same_kind)
    notes = [f"committed on {prov_a.get(k)}, rerun on {prov_b.get(k)}" for k in ("device", "cpu", "packages", "python")
             if prov_a.get(k) != prov_b.get(k)]
    head = "same CPU kind: rounding only" if same_kind else "another CPU kind (or unrecorded): measured cross-kind tolerance"
    if ok and record_confirmed and not same_kind:
        notes.append(f"not recorded in {LEDGER}: a match on another CPU kind is evidence, not a confirmation "
                     "(rerun on the kind that produced it, or produce it with vqbench run --trusted)")
    elif ok and record_confirmed:
        cpu = prov_b.get("cpu") or {}
        record(results_dir, [path], f"reproduced by vqbench validate --reproduce at {prov_b.get('git_commit')} on "
                                    f"{cpu.get('model')} ({cpu.get('torch_capability')}): identical to rounding")
        notes.append(f"recorded in {LEDGER}")
    return Check(name, ok, "\n".join([head, *lines, *notes]))


def validate(name_or_path: str, root: Path, results_dir: Path | None = None, task_id: str | None = None,
             seed: int | None = None, do_reproduce: bool = False, timeout_s: float | None = None,
             on_check: Callable[[Check], None] | None = None, sample: int | None = None,
             sample_seed: int | None = None, record_confirmed: bool = False) -> list[Check]:
    checks: list[Check] = []

    def add(check: Check) -> None:
        checks.append(check)
        if on_check:
            on_check(check)

    try:
        submission = get_submission(name_or_path, root)
        submission.hash  # noqa: B018 - computed here, in the driver, before any of its code runs
    except ConfigError as e:
        add(Check("schema: submission.yaml", False, str(e)))
        return checks
    add(Check("schema: submission.yaml", True, f"{submission.folder} (hash {submission.hash})"))
    problems = scan_source(submission)
    add(Check(SOURCE_CHECK, not problems, "; ".join(problems) or "ok"))
    problem = import_problem(submission, root, results_dir)
    add(Check("import (separate process, time limit)", problem is None, problem or submission.meta.entrypoint))
    if problem:
        return checks
    from vqbench.tasks import get_task
    task = get_task(task_id, root) if task_id else smoke_task()
    for k in dict.fromkeys(task.quantizer.level_sizes):  # a hierarchical task builds one instance per level's K
        for check in contract_checks(submission, task, root, results_dir, timeout_s, k):
            add(check)
    add(smoke_check(submission, root, timeout_s))
    if do_reproduce:
        for check in reproduce(submission, root, results_dir or root / "results", task_id, seed, timeout_s,
                               sample, sample_seed, record_confirmed):
            add(check)
    return checks


def contract_checks(submission: Submission, task, root: Path, results_dir: Path | None,
                    timeout_s: float | None, k: int | None = None) -> list[Check]:
    """Every CONTRACT_CHECKS entry at the task's dim and K (or `k`, one level's K of a hierarchical task:
    the check names then carry it), in one contained child (a fork each would cost more than the
    checks); a hang or crash fails the check that was running, the rest are not run."""
    dim, k = task.quantizer.dim, k or task.quantizer.codebook_size
    at = f" (K = {k})" if len(task.quantizer.level_sizes) > 1 else ""
    guard = Guard(protected_folders(root, results_dir))  # the smoke run has its own, in the runner
    done: list[Check] = []

    def on_progress(message) -> None:
        if message[0] == "end":
            done.append(Check(f"contract: {message[1]}{at}", bool(message[2]), str(message[3])))

    outcome = run_in_child(_checks_in_child, (submission, dim, k), timeout_s or CHECKS_TIMEOUT_S,
                           CHECKS_MEMORY_GB, on_progress=on_progress, confined=True)
    finished = {c.name for c in done}
    pending = [title for title, _ in CONTRACT_CHECKS if f"contract: {title}{at}" not in finished]
    for i, title in enumerate(pending):  # checks run in order: the first unfinished one was running
        done.append(Check(f"contract: {title}{at}", False, f"{outcome.failure or 'no report'} (dim {dim}, K {k})"
                          if i == 0 else "not run: an earlier check did not finish"))
    return [*done, files_check(guard)]


def smoke_check(submission: Submission, root: Path, timeout_s: float | None) -> Check:
    """The smoke task through the real runner; the detail shows utilization and its family's headline."""
    smoke = smoke_task()
    with tempfile.TemporaryDirectory(prefix="vqbench-smoke-") as tmp:
        result = _run_one(submission, smoke, smoke.seeds[0], root, Path(tmp), timeout_s)
    if result["status"] == "ok":
        m, headline = result["metrics"], METRICS[get_family(smoke.family).primary_metric]
        detail = f"utilization {m['utilization']:.3f}, {headline.label} {m[headline.name]:.3f}, " \
                 f"{result['provenance']['wall_time_s']:.1f} s"
    else:
        detail = result["error"]["reason"]
    return Check(f"smoke run: {smoke.id} through the runner (sandbox, rate-enforcing evaluation)",
                 result["status"] == "ok", detail)


def format_check(check: Check) -> str:
    """One report entry; control characters from the submission (ANSI escapes in an error message)
    are shown as '?', so a report cannot rewrite a terminal or a CI log."""
    detail = re.sub(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", "?", check.detail or "")
    head, *rest = detail.splitlines() or [""]
    lines = [f"{'PASS' if check.ok else 'FAIL'}  {check.name}" + (f": {head}" if head else "")]
    return "\n".join(lines + [f"        {line}" for line in rest])
