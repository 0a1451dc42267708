"""The Ray executor's warm workers: long-lived actors, each job in a fresh contained child of one.

One Ray run (module-scoped: Ray starts once for the file) holds every case side by side: two good
jobs (the last one runs on a reused worker), a job that raises, one that crashes its process (abort,
segfault), one that hangs past its limit (the worker kills its child and lives on), one whose worker
stops answering (the driver's backstop kills the worker) and one that kills its own worker. Every
bad job becomes a failed result with its reason; dead workers are replaced and the run finishes.
"""
from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from vqbench import runner
from vqbench.results import iter_results, read_result, result_path
from vqbench.runner import plan, run
from vqbench.submissions import get_submission
from vqbench.tasks import get_task

from conftest import FIXTURES, TINY_TASK

JOB_LIMIT_S = 15  # the hanging job's limit, enforced by its worker
BACKSTOP_S = 3  # the driver's backstop for `stalls` (a copy of `hangs`), far below its 15 s limit
ORDER = ["minimal:0", "stalls:0", "kills_worker:0", "raises:0", "crashes:0", "segfaults:0", "hangs:0", "minimal:1"]

KILLS_WORKER = '''\
"""Fixture: kills the Ray worker that supervises its job (the nearest ancestor titled ray::...)."""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "minimal"))
from quantizer import MinimalVQ  # noqa: E402


def ray_worker_pid():
    pid = os.getppid()
    while pid > 1:
        if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"):
            return pid
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    raise RuntimeError("not under a Ray worker")


class KillsWorker(MinimalVQ):
    def forward(self, z):
        os.kill(ray_worker_pid(), signal.SIGKILL)
        return super().forward(z)
'''


def make_project(root: Path) -> None:
    (root / "tasks" / "synthetic").mkdir(parents=True)
    (root / "tasks" / "synthetic" / "tiny.yaml").write_text(TINY_TASK)
    shutil.copytree(FIXTURES / "submissions", root / "submissions")
    shutil.copytree(root / "submissions" / "hangs", root / "submissions" / "stalls")
    yaml = root / "submissions" / "stalls" / "submission.yaml"
    yaml.write_text(yaml.read_text().replace("name: hangs", "name: stalls"))
    folder = root / "submissions" / "kills_worker"
    folder.mkdir()
    (folder / "quantizer.py").write_text(KILLS_WORKER)
    (folder / "submission.yaml").write_text(textwrap.dedent("""\
        name: kills_worker
        display_name: Broken fixture (kills its Ray worker)
        entrypoint: quantizer:KillsWorker
        description: A test fixture that misbehaves on purpose
        params: {}
        """))


def jobs_in_order(results: Path):
    task = get_task("synthetic/tiny")
    wanted = [(name, int(seed)) for name, seed in (s.split(":") for s in ORDER)]
    subs = [get_submission(name) for name in dict.fromkeys(name for name, _ in wanted)]
    jobs = {job.key[::2]: job for job in plan(subs, [task], [0, 1], results, False)[0]}
    return [jobs[key] for key in wanted]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """One Ray run (2 warm workers) over every case, and the serial run of the good jobs."""
    root = tmp_path_factory.mktemp("warm") / "project"
    make_project(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VQBENCH_ROOT", str(root))
        mp.setenv("VQBENCH_HOME", str(root.parent / "home"))
        real = runner._WarmPool._backstop
        mp.setattr(runner._WarmPool, "_backstop", lambda pool, job, limit: BACKSTOP_S
                   if job.submission.name == "stalls" else real(pool, job, limit))
        ray_summary = run(jobs_in_order(root / "results"), root, root / "results", "ray", workers=2,
                          timeout_s=JOB_LIMIT_S, show_progress=False)
        good = [job for job in jobs_in_order(root / "serial") if job.submission.name == "minimal"]
        serial_summary = run(good, root, root / "serial", "serial", show_progress=False)
        yield root, ray_summary, serial_summary


def test_warm_workers_give_the_serial_executors_numbers_bit_for_bit(warm):
    root, ray_summary, serial_summary = warm
    assert [(r["submission"], r["seed"]) for r in ray_summary.done] == [("minimal", 0), ("minimal", 1)]
    for serial in serial_summary.done:
        on_ray = read_result(result_path(root / "results", "minimal", "synthetic/tiny", serial["seed"]))
        assert on_ray["metrics"] == serial["metrics"] and on_ray["train"] == serial["train"]
        assert on_ray["provenance"]["executor"] == "ray" and on_ray["provenance"]["ray_node"]


def test_raise_crash_and_hang_fail_their_own_job_only(warm):
    _, summary, _ = warm
    reasons = {r["submission"]: r["error"]["reason"] for r in summary.failed}
    assert reasons["raises"] == "RuntimeError: fixture exploded on purpose"
    assert reasons["crashes"].startswith("worker crashed: the job's process died (killed by SIGABRT")
    assert reasons["segfaults"].startswith("worker crashed: the job's process died (killed by SIGSEGV")
    assert reasons["hangs"] == f"timeout: job exceeded {JOB_LIMIT_S} s"  # the worker killed its child


def test_dead_or_stuck_workers_are_replaced_and_their_jobs_failed(warm):
    root, summary, _ = warm
    reasons = {r["submission"]: r["error"] for r in summary.failed}
    # A confined job lives in its own PID namespace: it cannot even find the worker that supervises
    # it (a worker that dies is replaced: tests/test_ray_faults.py kills one from inside Ray).
    assert reasons["kills_worker"]["reason"] == "RuntimeError: not under a Ray worker"
    assert reasons["stalls"]["reason"] == f"timeout: job exceeded {BACKSTOP_S} s and was cancelled"
    # The stalled worker was killed by the driver's backstop, so the jobs after it ran on a
    # replacement; every job of the run has its result file.
    assert len(summary.done) + len(summary.failed) == len(ORDER)
    assert sorted((r["submission"], r["seed"]) for _, r in iter_results(root / "results")) == \
        sorted((name, int(seed)) for name, seed in (s.split(":") for s in ORDER))


def test_nothing_to_run_starts_neither_ray_nor_a_child(warm, monkeypatch, capsys):
    import ray

    from vqbench import validate
    from vqbench.cli import main

    root, _, _ = warm
    monkeypatch.setenv("VQBENCH_ROOT", str(root))

    def refuse(*args, **kwargs):
        raise AssertionError("started with nothing to run")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(validate, "import_problem", refuse)
    assert main(["run", "--submission", "minimal", "--tasks", "synthetic/tiny", "--seeds", "0,1",
                 "--results-dir", str(root / "results"), "--quiet"]) == 0
    assert "0 job(s) to run, 2 already done" in capsys.readouterr().err


def test_capacity_per_resource_shape():
    """Workers per shape: what the cluster's totals hold, never more than the jobs, at least one."""
    assert runner._capacity({"CPU": 2.0}, (1.0, 0.0), 12) == 2
    assert runner._capacity({"CPU": 2.0}, (1.0, 0.0), 1) == 1
    assert runner._capacity({"CPU": 16.0, "GPU": 1.0}, (2.0, 0.5), 12) == 2  # two jobs share the card
    assert runner._capacity({"CPU": 1.0}, (2.0, 0.0), 3) == 1  # too big for the cluster: one, left to wait
