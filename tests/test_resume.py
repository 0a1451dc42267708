"""Resume: plan() reruns what is missing, failed or stale and skips only current successes; stale
results stay on disk but leave the leaderboard; a killed write leaves no half file behind."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vqbench.job import failed_result
from vqbench.leaderboard import render
from vqbench.results import clean_partial_writes, is_done, iter_results, read_result, result_path, write_result
from vqbench.runner import plan, run
from vqbench.submissions import get_submission
from vqbench.tasks import get_task


def run_planned(project: Path, names=("minimal",), seeds=(0,)):
    results = project / "results"
    jobs, skipped = plan([get_submission(n) for n in names], [get_task("synthetic/tiny")], list(seeds), results, False)
    return run(jobs, project, results, "serial", show_progress=False), skipped


def planned(project: Path, name="minimal", seeds=(0,)) -> list[tuple[str, int]]:
    jobs, _ = plan([get_submission(name)], [get_task("synthetic/tiny")], list(seeds), project / "results", False)
    return [(job.submission.name, job.seed) for job in jobs]


def test_a_failed_result_is_rerun_on_the_next_run(project):
    """A job that crashed (a worker died, a node went away) is not 'done': the next run retries it."""
    minimal, task = get_submission("minimal"), get_task("synthetic/tiny")
    path = result_path(project / "results", "minimal", task.id, 0)
    write_result(path, failed_result(minimal, task, 0, project, "worker crashed: the job's process died",
                                     "WorkerCrashedError", "ray", 1.0))
    assert planned(project, seeds=(0, 1)) == [("minimal", 0), ("minimal", 1)]
    summary, skipped = run_planned(project, seeds=(0, 1))
    assert skipped == 0 and len(summary.done) == 2 and read_result(path)["status"] == "ok"
    assert planned(project, seeds=(0, 1)) == []


def test_a_job_that_keeps_failing_is_retried_every_run(project):
    summary, _ = run_planned(project, names=("raises", "minimal"))
    assert [r["submission"] for r in summary.failed] == ["raises"]
    assert planned(project, "raises") == [("raises", 0)] and planned(project, "minimal") == []


def result(status="ok", submission_hash="s", task_hash="t", **extra) -> dict:
    return {"status": status, "provenance": {"submission_hash": submission_hash, "task_hash": task_hash}, **extra}


@pytest.mark.parametrize("content, done", [
    (result(), True),
    (result(status="failed"), False),
    (result(submission_hash="other"), False),  # the submission's code changed
    (result(task_hash="other"), False),  # the task's spec changed
    ('{"status": "ok", "prov', False),  # half a file (not what write_result leaves, but a hand copy might)
    (None, False),  # no file
])
def test_is_done_only_for_a_current_success(tmp_path, content, done):
    path = tmp_path / "seed-0.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert is_done(path, "s", "t") is done


@pytest.mark.parametrize("content", ['{"status": "ok"}', "[1, 2]"])
def test_is_done_is_false_for_a_result_of_another_shape(tmp_path, content):
    path = tmp_path / "seed-0.json"
    path.write_text(content)
    assert is_done(path, "s", "t") is False


@pytest.mark.parametrize("edit", ["code", "hidden file", "submission.yaml"])
def test_editing_a_submission_makes_its_results_stale(project, edit):
    summary, _ = run_planned(project)
    assert len(summary.done) == 1
    folder = project / "submissions" / "minimal"
    if edit == "code":
        (folder / "quantizer.py").write_text((folder / "quantizer.py").read_text() + "\n# tuned\n")
    elif edit == "hidden file":
        (folder / ".codebook_init.pt").write_bytes(b"weights")  # could be loaded by the code: counts too
    else:  # submission.yaml holds the params the class is built with
        (folder / "submission.yaml").write_text((folder / "submission.yaml").read_text().replace("params: {}",
                                                                                                  "params: {}  # v2"))
    assert planned(project) == [("minimal", 0)]  # scheduled again
    page = render(project / "results", project)["README.md"].decode()
    assert "0 current result file(s) (0 failed, 1 stale excluded" in page
    assert read_result(result_path(project / "results", "minimal", "synthetic/tiny", 0))["status"] == "ok"  # kept


def test_partial_writes_are_cleaned_and_never_read(project):
    """What a run killed inside write_result leaves (its temp file) is removed by the next run, and
    never counted as a result meanwhile; other files are left alone."""
    folder = project / "results" / "minimal" / "synthetic" / "tiny"
    folder.mkdir(parents=True)
    partial = [folder / ".seed-0.json.k2j3h4.tmp", folder / ".seed-1.json.abc.tmp"]
    for path in partial:
        path.write_text('{"status": "ok", "metr')
    keep = [folder / "notes.tmp", project / "results" / "README.md"]
    for path in keep:
        path.write_text("not ours")
    assert list(iter_results(project / "results")) == []
    summary, _ = run_planned(project)  # a run cleans up first, then writes seed 0 whole
    assert not any(p.exists() for p in partial) and all(p.exists() for p in keep)
    assert [p.name for p, _ in iter_results(project / "results")] == ["seed-0.json"] and len(summary.done) == 1
    assert clean_partial_writes(project / "results") == 0 and clean_partial_writes(project / "no-such-folder") == 0
