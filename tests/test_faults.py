"""A hostile or broken submission fails its own job with a clear reason; every other result survives.

Each case runs the bad fixture next to `minimal` through the real serial executor (a forked child
per job) after a result already exists; that file, and every submission's code, must be
byte-identical afterwards.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from vqbench.results import read_result, result_path
from vqbench.runner import plan, run
from vqbench.schema import ConfigError
from vqbench.submissions import get_submission
from vqbench.tasks import get_task

from conftest import TINY_TASK, add_task

FAULT_TASK = TINY_TASK.replace("resources: {timeout_s: 120}", "resources: {timeout_s: 60, memory_gb: 1}")
CRASH = "worker crashed: the job's process died (killed by {}: segfault, abort, out of memory or exit)"


def snapshot(project: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for folder in ("results", "submissions") for p in (project / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture
def faults(project):
    """The project with a 1 GB job memory limit and one finished result of `minimal` on disk."""
    add_task(project, "tiny", FAULT_TASK)
    results = project / "results"
    jobs, _ = plan([get_submission("minimal")], [get_task("synthetic/tiny")], [0], results, False)
    assert not run(jobs, project, results, "serial", show_progress=False).failed
    return project


def run_beside_minimal(project: Path, name: str, **kw):
    results = project / "results"
    subs = [get_submission(name), get_submission("minimal")]
    jobs = [job for job in plan(subs, [get_task("synthetic/tiny")], [0, 1], results, False)[0]
            if job.submission.name == "minimal" or job.seed == 0]  # minimal seed 1 is the new neighbour
    return run(jobs, Path(os.environ["VQBENCH_ROOT"]), results, "serial", show_progress=False, **kw)


@pytest.mark.parametrize("name, reason", [
    ("segfaults", CRASH.format("SIGSEGV")),
    ("crashes", CRASH.format("SIGABRT")),
    ("memory_hog", "out of memory: the job passed its limit of 1 GB (resources.memory_gb): RuntimeError: "),
    ("floods_stdout", "RuntimeError: flooded stdout, then failed"),
    ("cheat_float_codes", "training step 0: codes must be an int64 tensor, got torch.float32"),
    ("cheat_out_of_range", "training step 0: codes outside [0, 16): min "),
    ("cheat_eval_rate", "evaluation: rate budget exceeded: 8.000 bits/token > log2(K) = 4.000 (depth 1 x codebook 256)"),
])
def test_fault_is_recorded_and_others_survive(faults, name, reason, capfd):
    before = snapshot(faults)
    summary = run_beside_minimal(faults, name)
    failed = read_result(result_path(faults / "results", name, "synthetic/tiny", 0))
    assert failed["status"] == "failed" and failed["error"]["reason"].startswith(reason), failed["error"]
    assert [(r["submission"], r["seed"]) for r in summary.done] == [("minimal", 1)]
    after = snapshot(faults)
    assert all(after[p] == content for p, content in before.items()), "an existing file changed"
    out, err = capfd.readouterr()
    assert len(out) + len(err) < 5000, "the job's output reached the driver's terminal"


@pytest.mark.parametrize("name", ["cheat_cache", "cheat_passthrough"])
def test_decode_cheats_score_exactly_what_their_codes_are_worth(faults, name):
    """A decode that returns cached z, or a z_q that passes z through, cannot reach the score: the
    reconstruction is decoded from the trained snapshot in a process that never ran forward(). Both
    train exactly as MinimalVQ does, so they score exactly what MinimalVQ scores."""
    summary = run_beside_minimal(faults, name)
    assert not summary.failed
    cheat = read_result(result_path(faults / "results", name, "synthetic/tiny", 0))
    honest = read_result(result_path(faults / "results", "minimal", "synthetic/tiny", 0))
    assert cheat["status"] == "ok" and cheat["metrics"] == honest["metrics"]


def test_output_flood_is_bounded_in_the_result(faults):
    run_beside_minimal(faults, "floods_stdout")
    path = result_path(faults / "results", "floods_stdout", "synthetic/tiny", 0)
    tail = read_result(path)["error"]["output_tail"]
    assert len(tail) <= 2000 and tail.endswith("last words before failing\n")
    assert path.stat().st_size < 20_000  # 36 MB were written to stdout and stderr


def test_confined_jobs_cannot_write_into_the_project(faults):
    before = snapshot(faults)
    summary = run_beside_minimal(faults, "tampers")
    failed = read_result(result_path(faults / "results", "tampers", "synthetic/tiny", 0))
    assert failed["error"]["reason"].startswith("OSError: [Errno 30] Read-only file system")
    assert failed["provenance"]["confinement"].startswith("namespaces: read-only file systems")
    assert [(r["submission"], r["seed"]) for r in summary.done] == [("minimal", 1)]
    after = snapshot(faults)
    assert all(after[p] == content for p, content in before.items())
    assert set(after) - set(before) == {result_path(faults / "results", n, "synthetic/tiny", s)
                                        for n, s in (("minimal", 1), ("tampers", 0))}  # the driver's writes


def test_writes_into_results_and_other_submissions_are_undone_and_fail_the_job(faults, monkeypatch):
    monkeypatch.setenv("VQBENCH_NO_NAMESPACES", "1")  # where namespaces are refused, the guard is the defence
    before = snapshot(faults)
    summary = run_beside_minimal(faults, "tampers")
    failed = read_result(result_path(faults / "results", "tampers", "synthetic/tiny", 0))
    assert failed["error"]["reason"] == (
        "tampering: the job changed files only the driver may write (results/minimal/synthetic/tiny/seed-0.json, "
        "results/tampers/synthetic/tiny/seed-9.json, submissions/minimal/quantizer.py); restored")
    assert failed["error"]["type"] == "Tampering" and failed["metrics"] == {}
    assert [(r["submission"], r["seed"]) for r in summary.done] == [("minimal", 1)]
    after = snapshot(faults)
    assert all(after[p] == content for p, content in before.items())
    assert not (faults / "results" / "tampers" / "synthetic" / "tiny" / "seed-9.json").exists()


def test_memory_limit_must_be_positive(project):
    add_task(project, "tiny", TINY_TASK.replace("timeout_s: 120", "timeout_s: 120, memory_gb: 0"))
    with pytest.raises(ConfigError, match="memory_gb"):
        get_task("synthetic/tiny")


def test_run_imports_submissions_in_a_child_not_in_the_driver(faults, capsys):
    """A submission that aborts at import time is refused up front; the driver lives to say so."""
    from vqbench.cli import main
    code = faults / "submissions" / "crashes" / "quantizer.py"
    code.write_text("import os\nos.abort()\n" + code.read_text())
    assert main(["run", "--submission", "crashes", "--tasks", "synthetic/tiny", "--executor", "serial"]) == 2
    err = capsys.readouterr().err
    assert "field 'entrypoint': worker crashed: the job's process died (killed by SIGABRT" in err
    assert "run `vqbench validate crashes`" in err
