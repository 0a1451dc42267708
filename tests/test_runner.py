"""Running jobs: results, failures with reasons, resume, determinism, the Ray executor, kill-and-resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vqbench.results import iter_results, read_result, result_path
from vqbench.runner import plan, run
from vqbench.submissions import get_submission
from vqbench.tasks import get_task

from conftest import TINY_TASK, add_task


def run_jobs(subs, tasks, results, executor="serial", seeds=None, **kw):
    jobs, skipped = plan([get_submission(s) for s in subs], tasks, seeds, results, force=kw.pop("force", False))
    return run(jobs, Path(os.environ["VQBENCH_ROOT"]), results, executor, show_progress=False, **kw), skipped


def test_serial_run_writes_complete_results_and_resumes(project):
    results = project / "results"
    tasks = [get_task("synthetic/tiny")]
    summary, skipped = run_jobs(["minimal"], tasks, results, seeds=[0, 1])
    assert len(summary.done) == 2 and not summary.failed and skipped == 0
    r = read_result(result_path(results, "minimal", "synthetic/tiny", 1))
    assert r["status"] == "ok" and r["seed"] == 1 and r["bits_per_token"] == 4.0
    for key in ("utilization", "perplexity", "perplexity_ratio", "dead_codes", "codebook_rank", "latent_rank",
                "quantization_error", "mse", "distortion_ratio"):
        assert r["metrics"][key] is not None, key
    assert 0 < r["metrics"]["utilization"] <= 1
    prov = r["provenance"]
    assert prov["task_hash"] == tasks[0].hash and prov["submission_hash"] == get_submission("minimal").hash
    assert prov["packages"]["torch"] and prov["device"] == "cpu" and prov["wall_time_s"] > 0
    # a rerun skips both; --force reruns them
    summary, skipped = run_jobs(["minimal"], tasks, results, seeds=[0, 1])
    assert skipped == 2 and not summary.done
    summary, skipped = run_jobs(["minimal"], tasks, results, seeds=[0], force=True)
    assert len(summary.done) == 1 and skipped == 0


def test_same_seed_gives_identical_metrics(project):
    task = get_task("synthetic/tiny")
    a, _ = run_jobs(["minimal"], [task], project / "a")
    b, _ = run_jobs(["minimal"], [task], project / "b")
    assert a.done[0]["metrics"] == b.done[0]["metrics"]
    c, _ = run_jobs(["minimal"], [task], project / "c", seeds=[1])
    assert c.done[0]["metrics"] != a.done[0]["metrics"]


def test_editing_a_task_reruns_it(project):
    results = project / "results"
    run_jobs(["minimal"], [get_task("synthetic/tiny")], results)
    add_task(project, "tiny", TINY_TASK.replace("steps: 30", "steps: 20"))
    jobs, skipped = plan([get_submission("minimal")], [get_task("synthetic/tiny")], None, results, False)
    assert len(jobs) == 1 and skipped == 0


@pytest.mark.parametrize("name, reason", [
    ("raises", "RuntimeError: fixture exploded on purpose"),
    ("nan_output", "non-finite loss at training step 5"),
])
def test_failures_are_recorded_and_do_not_stop_the_run(project, name, reason):
    results = project / "results"
    summary, _ = run_jobs([name, "minimal"], [get_task("synthetic/tiny")], results)
    assert [r["submission"] for r in summary.done] == ["minimal"]
    failed = read_result(result_path(results, name, "synthetic/tiny", 0))
    assert failed["status"] == "failed" and failed["error"]["reason"].startswith(reason), failed["error"]
    assert failed["error"]["traceback"]


def test_serial_timeout(project):
    summary, _ = run_jobs(["hangs"], [get_task("synthetic/tiny")], project / "results", timeout_s=2)
    assert summary.failed[0]["error"]["reason"] == "timeout: job exceeded 2 s"


def test_rate_budget_is_enforced(project):
    add_task(project, "small-k", TINY_TASK.replace("codebook_size: 16", "codebook_size: 8"))
    yaml = project / "submissions" / "minimal" / "submission.yaml"
    (project / "submissions" / "minimal" / "quantizer.py").write_text(
        (project / "submissions" / "minimal" / "quantizer.py").read_text().replace(
            "super().__init__(dim, codebook_size)", "super().__init__(dim, codebook_size)\n        self.codebook_size = 2 * codebook_size"))
    assert yaml.exists()
    summary, _ = run_jobs(["minimal"], [get_task("synthetic/small-k")], project / "results")
    assert summary.failed[0]["error"]["reason"].startswith("rate budget exceeded: 4.000 bits/token > log2(K) = 3.000")


def test_ray_executor_survives_failing_hanging_and_crashing_jobs(project):
    results = project / "results"
    summary, _ = run_jobs(["minimal", "raises", "hangs", "crashes", "segfaults", "cheat_cache"],
                          [get_task("synthetic/tiny")], results, executor="ray", workers=2, timeout_s=25)
    reasons = {r["submission"]: r["error"]["reason"] for r in summary.failed}
    assert sorted(r["submission"] for r in summary.done) == ["cheat_cache", "minimal"]
    assert reasons["raises"] == "RuntimeError: fixture exploded on purpose"
    assert reasons["hangs"] == "timeout: job exceeded 25 s"  # the worker kills its child: the worker lives on
    assert reasons["crashes"].startswith("worker crashed: the job's process died (killed by SIGABRT")
    assert reasons["segfaults"].startswith("worker crashed: the job's process died (killed by SIGSEGV")
    # both executors run a job the same way (forked children, one thread): the same numbers; the decode
    # cheat scores what its codes are worth, exactly MinimalVQ's numbers
    serial, _ = run_jobs(["minimal"], [get_task("synthetic/tiny")], project / "serial")
    assert all(serial.done[0]["metrics"] == r["metrics"] for r in summary.done)
    assert read_result(result_path(results, "minimal", "synthetic/tiny", 0))["provenance"]["executor"] == "ray"


def test_sigkill_mid_run_then_resume(project):
    """Kill the driver after some results landed; the rerun finishes the rest, every file whole."""
    results = project / "results"
    cmd = [sys.executable, "-m", "vqbench.cli", "run", "--submission", "minimal", "--tasks", "synthetic/tiny",
           "--seeds", ",".join(map(str, range(6))), "--executor", "serial", "--results-dir", str(results), "--quiet"]
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(results.rglob("seed-*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    landed = len(list(results.rglob("seed-*.json")))
    assert 2 <= landed < 6, "kill the run in the middle"
    assert all(r is not None and r["status"] == "ok" for _, r in iter_results(results))
    rerun = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{6 - landed} job(s) to run, {landed} already done" in rerun.stderr
    files = sorted(results.rglob("*"))
    assert [p.name for p in files if p.is_file()] == [f"seed-{i}.json" for i in range(6)]
    assert all(json.loads(p.read_text())["status"] == "ok" for p in files if p.is_file())


def test_one_driver_per_project(project, capsys):
    """A second run beside a running one is refused: the tamper guard would undo its writes (and
    fail the running job as tampering). Writing the leaderboard is refused too; checking it is not."""
    from vqbench.cli import main
    from vqbench.sandbox import exclusive_project
    with exclusive_project(project):
        assert main(["run", "--submission", "minimal", "--tasks", "synthetic/tiny", "--executor", "serial",
                     "--quiet"]) == 2
        assert main(["validate", "minimal"]) == 2
        assert main(["leaderboard"]) == 2 and not (project / "leaderboard").exists()
        capsys.readouterr()
        # reads only: it runs (no lock), and finds no result to check against
        assert main(["leaderboard", "--check"]) == 2 and "--results-dir" in capsys.readouterr().err
    assert not list((project / "results").rglob("seed-*.json"))
    assert main(["run", "--submission", "minimal", "--tasks", "synthetic/tiny", "--executor", "serial",
                 "--quiet"]) == 0


def test_multi_file_submission_runs_and_its_training_metrics_are_logged(project):
    results = project / "results"
    summary, _ = run_jobs(["two_files"], [get_task("synthetic/tiny")], results, seeds=[0])
    assert len(summary.done) == 1, summary.failed and summary.failed[0]["error"]
    log = read_result(result_path(results, "two_files", "synthetic/tiny", 0))["train"]["quantizer_log"]
    steps = [step for step, _ in log]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 29  # the loss curve's points
    # plain names and finite numbers only: "bad name!" and a NaN never reach the result file
    assert all(set(values) == {"codes_in_batch"} and 1 <= values["codes_in_batch"] <= 16 for _, values in log)


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_to_the_driver_ends_the_running_job_too(project):
    """`kill <driver>` (or `timeout`, a scheduler) must not leave the job it was running behind,
    training on a core nobody watches: the driver unwinds as on Ctrl-C and kills the job's processes."""
    cmd = [sys.executable, "-m", "vqbench.cli", "run", "--submission", "hangs", "--tasks", "synthetic/tiny",
           "--executor", "serial", "--results-dir", str(project / "results"), "--quiet"]
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, job, since = time.monotonic() + 180, set(), time.monotonic()
    while time.monotonic() < deadline and proc.poll() is None:
        now = _descendants(proc.pid)
        if now != job:  # the driver's short confinement probe comes and goes before the job starts
            job, since = now, time.monotonic()
        elif len(job) >= 3 and time.monotonic() - since > 3:  # fork server, job, its init: steady, in forward()
            break
        time.sleep(0.2)
    assert len(job) >= 3 and proc.poll() is None, "the job never started"
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        for pid in [proc.pid, *job]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        raise
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err[-2000:]
    deadline = time.monotonic() + 10
    while any(map(_alive, job)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in job if _alive(pid)], "processes of the job outlived its driver"
