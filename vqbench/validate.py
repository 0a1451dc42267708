"""`vqbench validate`: is a submission fit to run? Each check is reported pass/fail with why.

1. schema (submission.yaml) and a source scan for reaching into the harness;
2. import, in a child process with a time limit;
3. contract checks (the functions below, shared with tests/test_contract.py), in a child process
   with a time limit: shapes and dtypes, codes in [0, K), gradient, decode(codes) == z_q in eval
   mode, decode a pure per-token function of codes that ignores what forward() saw, edge inputs,
   determinism, state_dict round trip, rate within the task's budget;
4. a smoke run of a tiny task through the real runner (serial executor, sandbox, guard, the
   rate-enforcing evaluation), into a throwaway results folder;
5. with --reproduce, one committed (task, seed) of results/ rerun and compared metric by metric.

The smoke task lives in the package (vqbench/smoke_tasks/), not in tasks/: it is part of the
harness's self-test, not of the benchmark, so no `--tasks` glob, tier or leaderboard ever sees it.
"""
from __future__ import annotations

import ast
import io
import math
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from vqbench.contract import Quantizer, QuantizerOutput
from vqbench.ops import code_index
from vqbench.results import iter_results
from vqbench.sandbox import Guard, protected_folders, run_in_child, tamper_reason
from vqbench.schema import ConfigError
from vqbench.submissions import Submission, get_submission
from vqbench.train import (JobFailure, check_output, check_rate, decode_table, max_difference,
                           seed_everything)

SMOKE_TASK = Path(__file__).parent / "smoke_tasks" / "synthetic" / "smoke.yaml"
IMPORT_TIMEOUT_S = 60.0
CHECKS_TIMEOUT_S = 180.0
CHECKS_MEMORY_GB = 1.0  # the checks use tensors of kilobytes; a quantizer that needs more is broken
# CPU jobs are deterministic given seed, one thread, torch build and CPU kind: a rerun on the same
# machine type matches to the last bit (difference 0). 1e-6 relative leaves room for a reduction
# order that differs in the last bits, and is far below what the leaderboard shows (3-4 digits).
# Another CPU kind (AVX2 vs AVX-512 kernels) or torch build changes last bits per op, and training
# amplifies them: expect a mismatch there, which the report's provenance notes point out.
REPRODUCE_RTOL = 1e-6
REPRODUCE_ATOL = 1e-9
PUBLIC_MODULES = ("vqbench", "vqbench.contract", "vqbench.ops", "vqbench.kmeans", "vqbench.adapters")  # what a submission may import
SUSPECT_MODULES = ("gc", "inspect", "ctypes")  # reach into other objects' memory or frames


# ---------------------------------------------------------------- contract checks (shared with tests)

Build = Callable[[int], Quantizer]  # seed -> a fresh quantizer


def _inputs(dim: int, seed: int, shape=(3, 5)) -> torch.Tensor:
    return torch.randn(*shape, dim, generator=torch.Generator().manual_seed(seed))


def _warm_up(q: Quantizer, dim: int, steps: int = 3) -> None:
    """A few training-mode forwards, so lazy initialisations (k-means, ...) have happened."""
    q.train()
    for step in range(steps):
        q.schedule(step, steps)
        q(_inputs(dim, 100 + step))


def _warmed_in_eval(build: Build, dim: int, k: int) -> tuple[Quantizer, int, int]:
    """A fresh quantizer after a few training steps, in eval mode, with its declared (size, depth)."""
    q = build(0)
    size, depth = check_rate(q, k)
    _warm_up(q, dim)
    q.eval()
    return q, size, depth


def _forward(q: Quantizer, z: torch.Tensor, size: int, depth: int, where: str) -> QuantizerOutput:
    return check_output(q(z), z, where, size, depth)


def check_rate_both_modes(build: Build, dim: int, k: int) -> str:
    q = build(0)
    size, depth = check_rate(q, k, "train mode: ")
    _warm_up(q, dim)
    q.eval()
    if check_rate(q, k, "eval mode: ") != (size, depth):
        raise JobFailure(f"codebook_size/depth change with eval(): {(size, depth)} -> {(q.codebook_size, q.depth)}")
    return f"{depth * math.log2(size):.2f} bits/token <= log2({k}) = {math.log2(k):.2f}"


def check_forward(build: Build, dim: int, k: int) -> str:
    q = build(0)
    size, depth = check_rate(q, k)
    _warm_up(q, dim)
    for mode in (True, False):
        q.train(mode)
        out = _forward(q, _inputs(dim, 1), size, depth, "train mode" if mode else "eval mode")
        loss = torch.as_tensor(out.loss)
        if loss.dim() != 0 or not torch.isfinite(loss):
            raise JobFailure(f"loss must be a finite scalar, got shape {tuple(loss.shape)} value {loss}")
    return f"codes {tuple(out.codes.shape)} int64 in [0, {size})"


def check_gradient(build: Build, dim: int, k: int) -> str:
    q = build(0)
    _warm_up(q, dim)
    q.train()
    z = _inputs(dim, 2).requires_grad_(True)
    # Through z_q alone: the task's decoder reads z_q, so that is the path the encoder learns by
    # (an auxiliary loss that also touches z does not count).
    q(z).z_q.square().sum().backward()
    if z.grad is None or not z.grad.abs().sum() > 0:
        raise JobFailure("no gradient reaches z through z_q (use a straight-through estimator or better)")
    return "z.grad from z_q is non-zero"


def check_decode_equals_zq(build: Build, dim: int, k: int) -> str:
    q, size, depth = _warmed_in_eval(build, dim, k)
    z = _inputs(dim, 3, (4, 7))
    with torch.no_grad():
        out = _forward(q, z, size, depth, "eval mode")
        if (diff := max_difference(q.decode(out.codes.clone()), out.z_q)) is not None:
            raise JobFailure(f"decode(codes) differs from z_q in eval mode (max difference {diff:.3g}); the harness "
                             "reconstructs from decode(codes) only")
        if not torch.equal(_forward(q, z, size, depth, "eval mode").codes, out.codes):
            raise JobFailure("eval-mode codes differ between two forwards of the same z")
    return "max difference within float rounding"


def check_decode_pure(build: Build, dim: int, k: int) -> str:
    """What evaluation relies on: every code tuple has one vector, whatever the order, batch or position."""
    q, size, depth = _warmed_in_eval(build, dim, k)
    with torch.no_grad():
        table = decode_table(q, size, depth, dim, torch.device("cpu"))
        gen = torch.Generator().manual_seed(4)
        codes = torch.randint(size, (4, 32) + ((depth,) if depth > 1 else ()), generator=gen)
        decoded = q.decode(codes.clone())
        perm = torch.randperm(4, generator=gen)
        if (diff := max_difference(q.decode(codes[perm].clone()), decoded[perm])) is not None:
            raise JobFailure(f"decode depends on batch order: decode(codes[perm]) != decode(codes)[perm] "
                             f"(max difference {diff:.3g})")
        if (diff := max_difference(decoded, table[code_index(codes, size, depth)])) is not None:
            distinct_codes = len(torch.unique(code_index(codes, size, depth)))
            distinct_vectors = len(torch.unique(decoded.reshape(-1, dim), dim=0))
            raise JobFailure(f"decode is not per-token: {distinct_codes} distinct codes decode to "
                             f"{distinct_vectors} distinct vectors (max difference {diff:.3g} from each code "
                             "decoded alone)")
    return f"{size ** depth} code tuples decoded twice, in two orders; batch order and position don't matter"


def check_decode_ignores_forward(build: Build, dim: int, k: int) -> str:
    """decode(codes) must not change after forward() sees other inputs: no cache of z can feed it."""
    q, size, depth = _warmed_in_eval(build, dim, k)
    with torch.no_grad():
        codes = _forward(q, _inputs(dim, 5), size, depth, "eval mode").codes
        before = q.decode(codes.clone())
        q(_inputs(dim, 6))
        if (diff := max_difference(q.decode(codes.clone()), before)) is not None:
            raise JobFailure(f"decode(codes) changed after forward() saw other inputs (max difference {diff:.3g}): "
                             "decode must depend on codes and trained weights only")
    return "same codes, same vectors after other forwards"


EDGE_INPUTS = {
    "zeros": lambda dim: torch.zeros(2, 4, dim),
    "large": lambda dim: 1e3 * _inputs(dim, 7, (2, 4)),
    "batch1": lambda dim: _inputs(dim, 8, (1, 4)),
    "token1": lambda dim: _inputs(dim, 9, (2, 1)),
    "batch1_token1": lambda dim: _inputs(dim, 10, (1, 1)),
}


def check_edge_input(build: Build, dim: int, k: int, case: str) -> None:
    q = build(0)
    size, depth = check_rate(q, k)
    z = EDGE_INPUTS[case](dim)
    for mode in (True, False):
        q.train(mode)
        where = f"{case} input, {'train' if mode else 'eval'} mode"
        out = _forward(q, z, size, depth, where)
        if not (torch.isfinite(out.z_q).all() and torch.isfinite(torch.as_tensor(out.loss)).all()):
            raise JobFailure(f"{where}: z_q or loss is not finite")
        if not torch.isfinite(q.decode(out.codes.clone())).all():
            raise JobFailure(f"{where}: decode(codes) is not finite")


def check_edge_inputs(build: Build, dim: int, k: int) -> str:
    for case in EDGE_INPUTS:
        check_edge_input(build, dim, k, case)
    return ", ".join(EDGE_INPUTS)


def check_seeded(build: Build, dim: int, k: int) -> str:
    outs = []
    for _ in range(2):
        q = build(3)
        torch.manual_seed(0)  # train-mode sampling (Gumbel, restarts) must follow the global seed
        _warm_up(q, dim)
        q.eval()
        with torch.no_grad():
            outs.append(q(_inputs(dim, 11)))
    if not (torch.equal(outs[0].codes, outs[1].codes) and torch.equal(outs[0].z_q, outs[1].z_q)):
        raise JobFailure("two quantizers built and trained under the same seed give different codes or z_q")
    return "same seed, same codes and z_q"


def check_state_dict(build: Build, dim: int, k: int) -> str:
    a = build(3)
    _warm_up(a, dim)
    a.eval()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = build(99)
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    b.eval()
    z = _inputs(dim, 12)
    with torch.no_grad():
        out_a, out_b = a(z), b(z)
        if not torch.equal(out_a.codes, out_b.codes) or max_difference(out_a.z_q, out_b.z_q) is not None:
            raise JobFailure("a quantizer loaded from another's state_dict quantizes differently: keep all state "
                             "in parameters and registered buffers")
        if max_difference(a.decode(out_a.codes.clone()), b.decode(out_a.codes.clone())) is not None:
            raise JobFailure("a quantizer loaded from another's state_dict decodes differently")
    return "loaded copy quantizes and decodes identically"


def check_codebook(build: Build, dim: int, k: int) -> str:
    q = build(0)
    book = q.codebook()
    if book is None:
        return "no explicit codebook (optional)"
    if not isinstance(book, torch.Tensor) or book.dim() != 2 or book.shape[1] != dim \
            or book.shape[0] > k * max(1, q.depth):
        raise JobFailure(f"codebook() must be (at most K x depth, {dim}), got {tuple(getattr(book, 'shape', ()))}")
    return f"codebook {tuple(book.shape)}"


CONTRACT_CHECKS: list[tuple[str, Callable[[Build, int, int], str]]] = [
    ("rate: depth x log2(codebook_size) within log2(K), in train and eval mode", check_rate_both_modes),
    ("forward: z_q shape, int64 codes in [0, codebook_size), finite scalar loss", check_forward),
    ("gradient reaches z", check_gradient),
    ("decode(codes) equals z_q in eval mode", check_decode_equals_zq),
    ("decode is a pure, per-token function of codes", check_decode_pure),
    ("decode ignores what forward() saw (no cached z)", check_decode_ignores_forward),
    ("edge inputs stay finite", check_edge_inputs),
    ("deterministic under a seed", check_seeded),
    ("state_dict round trip", check_state_dict),
    ("codebook() shape", check_codebook),
]


def builder(submission: Submission, dim: int, k: int) -> Build:
    def build(seed: int) -> Quantizer:
        seed_everything(seed)
        return submission.build(dim, k)
    return build


# ---------------------------------------------------------------- the child processes' side

def _import_in_child(submission: Submission, emit) -> str:
    return submission.quantizer_class().__name__


def import_problem(submission: Submission, root: Path, results_dir: Path | None = None) -> str | None:
    """Why the submission cannot be imported (in a contained child: its import-time code never runs
    in the driver), or None. Import-time writes into protected folders are undone and reported."""
    guard = Guard(protected_folders(root, results_dir))
    outcome = run_in_child(_import_in_child, (submission,), IMPORT_TIMEOUT_S, CHECKS_MEMORY_GB)
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


def _committed(submission: Submission, results_dir: Path, task_id: str | None, seed: int | None, root: Path):
    """The committed, current, successful result to reproduce: (task, seed, result) or a reason."""
    from vqbench.tasks import load_registry
    registry = load_registry(root)
    for path, result in iter_results(Path(results_dir) / submission.name):
        if not result or result.get("status") != "ok":
            continue
        task = registry.get(result.get("task"))
        prov = result.get("provenance", {})
        if task is None or (prov.get("submission_hash"), prov.get("task_hash")) != (submission.hash, task.hash):
            continue
        if (task_id is None or task.id == task_id) and (seed is None or result.get("seed") == seed):
            return task, result["seed"], result
    want = f"task {task_id!r}" if task_id else "any task"
    return None, None, f"no current successful result of {want}{f' seed {seed}' if seed is not None else ''} " \
                       f"under {Path(results_dir) / submission.name} (run it first, or commit its results)"


def compare_metrics(committed: dict, rerun: dict) -> tuple[bool, list[str]]:
    """Per metric: committed, rerun, difference; ok when each is within REPRODUCE_RTOL/ATOL."""
    lines, ok = [], True
    for name in sorted(set(committed) | set(rerun)):
        a, b = committed.get(name), rerun.get(name)
        if a is None or b is None:
            same = a is None and b is None
            lines.append(f"{name}: committed {a}, rerun {b}{'' if same else '  MISMATCH'}")
        else:
            same = math.isclose(a, b, rel_tol=REPRODUCE_RTOL, abs_tol=REPRODUCE_ATOL)
            rel = abs(a - b) / max(abs(a), 1e-300)
            lines.append(f"{name}: committed {a:.9g}, rerun {b:.9g}, difference {b - a:.3g} (rel {rel:.2g})"
                         f"{'' if same else '  MISMATCH'}")
        ok &= same
    return ok, lines


def reproduce(submission: Submission, root: Path, results_dir: Path, task_id: str | None, seed: int | None,
              timeout_s: float | None) -> Check:
    name = f"reproduce a committed result (rel {REPRODUCE_RTOL:g}, abs {REPRODUCE_ATOL:g} per metric)"
    task, seed, committed = _committed(submission, results_dir, task_id, seed, root)
    if task is None:
        return Check(name, False, committed)
    with tempfile.TemporaryDirectory(prefix="vqbench-reproduce-") as tmp:
        rerun = _run_one(submission, task, seed, root, Path(tmp), timeout_s)
    if rerun["status"] != "ok":
        return Check(name, False, f"{task.id} seed {seed}: the rerun failed: {rerun['error']['reason']}")
    ok, lines = compare_metrics(committed["metrics"], rerun["metrics"])
    prov_a, prov_b = committed["provenance"], rerun["provenance"]
    notes = [f"committed on {prov_a.get(k)}, rerun on {prov_b.get(k)}" for k in ("device", "packages", "python")
             if prov_a.get(k) != prov_b.get(k)]
    return Check(name, ok, "\n".join([f"{task.id} seed {seed}", *lines, *notes]))


def validate(name_or_path: str, root: Path, results_dir: Path | None = None, task_id: str | None = None,
             seed: int | None = None, do_reproduce: bool = False, timeout_s: float | None = None,
             on_check: Callable[[Check], None] | None = None) -> list[Check]:
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
    add(Check("source: imports only the public API (vqbench, .ops, .kmeans, .adapters); no gc/inspect/ctypes/frames",
              not problems, "; ".join(problems) or "ok"))
    problem = import_problem(submission, root, results_dir)
    add(Check("import (separate process, time limit)", problem is None, problem or submission.meta.entrypoint))
    if problem:
        return checks

    from vqbench.tasks import get_task
    task = get_task(task_id, root) if task_id else smoke_task()
    dim, k = task.quantizer.dim, task.quantizer.codebook_size
    guard = Guard(protected_folders(root, results_dir))  # the smoke run has its own, in the runner
    finished: set[str] = set()

    def on_progress(message) -> None:
        if message[0] == "end":
            finished.add(message[1])
            add(Check(f"contract: {message[1]}", bool(message[2]), str(message[3])))

    # One child for all contract checks (a fork each would cost more than the checks); a hang or
    # crash fails the check that was running and marks the rest not run.
    outcome = run_in_child(_checks_in_child, (submission, dim, k), timeout_s or CHECKS_TIMEOUT_S,
                           CHECKS_MEMORY_GB, on_progress=on_progress)
    pending = [title for title, _ in CONTRACT_CHECKS if title not in finished]
    for i, title in enumerate(pending):  # checks run in order: the first unfinished one was running
        add(Check(f"contract: {title}", False, f"{outcome.failure or 'no report'} (dim {dim}, K {k})" if i == 0
                  else "not run: an earlier check did not finish"))

    add(files_check(guard))

    smoke = smoke_task()
    with tempfile.TemporaryDirectory(prefix="vqbench-smoke-") as tmp:
        result = _run_one(submission, smoke, smoke.seeds[0], root, Path(tmp), timeout_s)
    if result["status"] == "ok":
        m = result["metrics"]
        detail = f"utilization {m['utilization']:.3f}, distortion ratio {m['distortion_ratio']:.3f}, " \
                 f"{result['provenance']['wall_time_s']:.1f} s"
    else:
        detail = result["error"]["reason"]
    add(Check(f"smoke run: {smoke.id} through the runner (sandbox, rate-enforcing evaluation)",
              result["status"] == "ok", detail))

    if do_reproduce:
        add(reproduce(submission, root, results_dir or root / "results", task_id, seed, timeout_s))
    return checks


def format_check(check: Check) -> str:
    """One report entry; control characters from the submission (ANSI escapes in an error message)
    are shown as '?', so a report cannot rewrite a terminal or a CI log."""
    detail = re.sub(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", "?", check.detail or "")
    head, *rest = detail.splitlines() or [""]
    lines = [f"{'PASS' if check.ok else 'FAIL'}  {check.name}" + (f": {head}" if head else "")]
    return "\n".join(lines + [f"        {line}" for line in rest])
