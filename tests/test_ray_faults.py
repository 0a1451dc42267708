"""The default (Ray) executor's fault branches, on a real local Ray: the supervising task raises, its
worker dies, it stops answering (the driver's backstop timeout, then ray.cancel); and a SIGKILLed
`vqbench run` driver, rerun, finishes exactly what is missing. Faults inside a job's own process
(the submission's) are tests/test_runner.py's; these are the ones around it.

All fault branches share one Ray start: one run whose warm worker (vqbench.runner.JobSupervisor)
is replaced by one that misbehaves for some submissions. Defined inside the fixture, it is shipped
to the workers by value, as Ray pickles a class that is not importable by name.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vqbench import runner
from vqbench.results import iter_results, read_result, result_path
from vqbench.runner import Job, run
from vqbench.submissions import get_submission
from vqbench.tasks import get_task

from conftest import TINY_TASK, add_task, make_project


@pytest.fixture(scope="module")
def ray_faults(tmp_path_factory):
    """One run on local Ray (two workers): {submission: its result}, and the results folder."""
    root = make_project(tmp_path_factory.mktemp("ray-faults") / "project")

    class MisbehavingSupervisor(runner.JobSupervisor):
        def run(self, submission, task, seed, root, timeout_s):
            import os
            import signal
            import time
            if submission.name == "raises":
                raise RuntimeError("the supervising task failed")
            if submission.name == "crashes":
                os.kill(os.getpid(), signal.SIGKILL)  # the Ray worker itself dies, not a job's child
            if submission.name == "hangs":
                time.sleep(600)  # and never enforces the job's limit
            return super().run(submission, task, seed, root, timeout_s)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VQBENCH_ROOT", str(root))
        mp.setenv("VQBENCH_HOME", str(root.parent / "home"))
        mp.setattr(runner, "JobSupervisor", MisbehavingSupervisor)
        mp.setattr(runner, "WORKER_GRACE_S", 1.0)  # the backstop: the job's limit + this
        add_task(root, "tiny-short", TINY_TASK.replace("timeout_s: 120", "timeout_s: 2"))
        tiny, short = get_task("synthetic/tiny"), get_task("synthetic/tiny-short")
        # minimal first and last: the run goes on around the faults, on the workers they leave
        jobs = [Job(get_submission(name), short if name == "hangs" else tiny, seed) for name, seed in
                [("raises", 0), ("minimal", 0), ("crashes", 0), ("hangs", 0), ("minimal", 1)]]
        summary = run(jobs, root, root / "results", "ray", workers=2, show_progress=False)
    by_job = {(r["submission"], r["seed"]): r for r in summary.done + summary.failed}
    assert len(by_job) == len(jobs)
    return by_job, root / "results"


def test_the_run_goes_on_around_ray_faults(ray_faults):
    results, folder = ray_faults
    assert {key for key, r in results.items() if r["status"] == "ok"} == {("minimal", 0), ("minimal", 1)}
    for (name, seed), r in results.items():  # every outcome is written, as reported
        task = "synthetic/tiny-short" if name == "hangs" else "synthetic/tiny"
        assert read_result(result_path(folder, name, task, seed)) == r
        assert r["provenance"]["executor"] == "ray"


def test_a_dead_worker_is_a_worker_crash(ray_faults):
    error = ray_faults[0][("crashes", 0)]["error"]
    assert (error["reason"], error["type"]) == (
        "worker crashed: the Ray worker supervising the job died (killed, out of memory or its node lost)",
        "WorkerCrashedError")


def test_a_worker_that_stops_answering_is_cancelled_at_the_backstop(ray_faults):
    result = ray_faults[0][("hangs", 0)]
    assert (result["error"]["reason"], result["error"]["type"]) == (
        "timeout: job exceeded 3 s and was cancelled", "JobTimeout")  # 2 s limit + 1 s grace
    assert 3 <= result["provenance"]["wall_time_s"] < 10


def test_an_error_in_the_supervising_task_is_recorded_with_its_traceback(ray_faults):
    error = ray_faults[0][("raises", 0)]["error"]
    assert error["type"] == "RayTaskError(RuntimeError)"
    assert error["traceback"].rstrip().endswith("RuntimeError: the supervising task failed")


def test_an_error_in_the_supervising_task_is_named_in_the_reason(ray_faults):
    reason = ray_faults[0][("raises", 0)]["error"]["reason"]
    assert "the supervising task failed" in reason and "\x1b" not in reason, reason


def test_sigkill_of_a_ray_driver_then_resume(project):
    """Kill `vqbench run` (Ray, the default executor) once a result has landed: only whole files are
    left; the rerun runs exactly the missing jobs and ends with every result."""
    results = project / "results"
    cmd = [sys.executable, "-m", "vqbench.cli", "run", "--submission", "minimal", "--tasks", "synthetic/tiny",
           "--seeds", "0,1,2", "--workers", "1", "--results-dir", str(results), "--quiet"]
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(results.rglob("seed-*.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    landed = [r for _, r in iter_results(results)]
    assert 1 <= len(landed) < 3, "kill the run in the middle"
    assert all(r is not None and r["status"] == "ok" for r in landed)  # whole files only
    rerun = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{3 - len(landed)} job(s) to run, {len(landed)} already done" in rerun.stderr
    files = sorted(p for p in results.rglob("*") if p.is_file())
    assert [p.name for p in files] == ["seed-0.json", "seed-1.json", "seed-2.json"]  # no temp file either
    assert {json.loads(p.read_text())["provenance"]["executor"] for p in files} == {"ray"}
