"""Fan jobs (submissions x tasks x seeds) out to Ray or run them serially; write each result as it lands.

The driver alone writes result files, one atomic rename each, so a crash of any worker, or a
SIGKILL of the driver, leaves only whole files behind, and a rerun picks up what is missing.
Every job runs in a process of its own (a forked child of the serial driver or of a Ray worker) under
vqbench.sandbox's limits, and a guard undoes (and fails the job for) any write into results/,
submissions/, tasks/ or leaderboard/ made while it ran.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vqbench.job import failed_result, run_contained
from vqbench.results import clean_partial_writes, is_done, result_path, write_result
from vqbench.sandbox import Guard, protected_folders, tamper_reason
from vqbench.submissions import Submission

console = Console(stderr=True)
WORKER_GRACE_S = 60.0  # Ray backstop on top of a job's limit: a fresh worker imports torch first
FORWARDED_PREFIX = "VQBENCH_"  # every setting a job reads from the environment; Ray workers may be on other nodes


@dataclass(frozen=True)
class Job:
    submission: Submission
    task: object  # vqbench.tasks.Task
    seed: int

    @property
    def key(self) -> tuple[str, str, int]:
        return self.submission.name, self.task.id, self.seed

    @property
    def label(self) -> str:
        return f"{self.submission.name} | {self.task.id} | seed {self.seed}"


@dataclass
class RunSummary:
    done: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    skipped: int = 0


def plan(submissions: Iterable[Submission], tasks: Iterable, seeds: list[int] | None,
         results_dir: Path, force: bool) -> tuple[list[Job], int]:
    """Jobs still to run, and how many were skipped because an identical result exists (resume)."""
    todo, skipped = [], 0
    for sub in submissions:
        for task in tasks:
            for seed in (seeds if seeds is not None else task.seeds):
                path = result_path(results_dir, sub.name, task.id, seed)
                if not force and is_done(path, sub.hash, task.hash):
                    skipped += 1
                else:
                    todo.append(Job(sub, task, seed))
    return todo, skipped


def run_serial(jobs: list[Job], root: Path, timeout_s: float | None, on_result: Callable[[Job, dict], None],
               progress: Progress | None = None) -> None:
    """One job at a time, each in a forked child: a crash, hang or memory blow-up ends the child only."""
    for job in jobs:
        steps = progress.add_task(f"  {job.label}", total=job.task.train.steps) if progress else None
        try:
            result = run_contained(job.submission, job.task, job.seed, root, "serial",
                                   timeout_s or job.task.resources.timeout_s,
                                   on_progress=(lambda s: progress.update(steps, completed=s)) if progress else None)
        finally:
            if progress:
                progress.remove_task(steps)
        on_result(job, result)


def _remote_job(submission, task, seed, root, timeout_s):
    """The Ray worker only supervises: the job runs in a contained child of it, exactly as in the
    serial executor, so the worker (and what it returns to the driver) never runs submission code."""
    import ray
    result = run_contained(submission, task, seed, Path(root), "ray", timeout_s)
    result["provenance"]["ray_node"] = ray.get_runtime_context().get_node_id()
    return result


def worker_env() -> dict[str, str]:
    """What a Ray worker's environment gets from the driver's: one thread, and every VQBENCH_* setting
    (data folders, cache home, project root, family path), so workers on other nodes read the same."""
    return {"OMP_NUM_THREADS": "1", **{k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIX)}}


def _ray_init(workers: int | None, address: str | None):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    runtime_env = {"env_vars": worker_env()}
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    else:  # address="local": a fresh private instance even if a `ray start` cluster runs on this machine
        ray.init(address="local", num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 runtime_env=runtime_env)
    return ray


def _ray_result(ray, ref, job: Job, root: Path, elapsed: float) -> dict:
    """The job's result, or a failed result naming what went wrong with its worker."""
    from ray.exceptions import WorkerCrashedError
    try:
        return ray.get(ref)
    except WorkerCrashedError as e:
        return failed_result(job.submission, job.task, job.seed, root, "worker crashed: the job's process died "
                             "(segfault, abort or out of memory)", "WorkerCrashedError", "ray", elapsed, str(e))
    except ray.exceptions.RayError as e:  # task error, cancellation, get timeout
        return failed_result(job.submission, job.task, job.seed, root,
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                             type(e).__name__, "ray", elapsed, str(e))


def run_ray(jobs: list[Job], root: Path, timeout_s: float | None, on_result: Callable[[Job, dict, list[Job]], None],
            workers: int | None = None, address: str | None = None) -> None:
    """Ray fan-out with a per-job wall-clock limit (Ray has none: ray.wait, then ray.cancel(force))."""
    ray = _ray_init(workers, address)
    try:
        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
        slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(max_retries=0)(_remote_job)
        pending, running = list(jobs), {}  # running: ref -> (job, start time, deadline)
        while pending or running:
            # Submit no more than there are slots, so a job's clock starts when it starts running.
            while pending and len(running) < slots:
                job = pending.pop(0)
                limit = timeout_s or job.task.resources.timeout_s
                ref = remote.options(num_cpus=job.task.resources.cpus,
                                     num_gpus=job.task.resources.gpus if has_gpu else 0).remote(
                    job.submission, job.task, job.seed, str(root), limit)
                # The worker enforces the limit on its child; this backstop (plus time for a fresh worker
                # to start) catches a worker that itself stops answering.
                running[ref] = (job, time.monotonic(), time.monotonic() + limit + WORKER_GRACE_S)
            wait_for = max(0.05, min(d for _, _, d in running.values()) - time.monotonic())
            ready, _ = ray.wait(list(running), num_returns=1, timeout=wait_for)
            for ref in ready:
                job, start, _ = running.pop(ref)
                result = _ray_result(ray, ref, job, root, time.monotonic() - start)
                on_result(job, result, [j for j, _, _ in running.values()])
            now = time.monotonic()
            for ref in [r for r, (_, _, deadline) in running.items() if now >= deadline]:
                job, start, deadline = running.pop(ref)
                ray.cancel(ref, force=True)
                on_result(job, failed_result(job.submission, job.task, job.seed, root,
                                             f"timeout: job exceeded {deadline - start:.0f} s and was cancelled",
                                             "JobTimeout", "ray", now - start), [j for j, _, _ in running.values()])
    finally:
        ray.shutdown()


def run(jobs: list[Job], root: Path, results_dir: Path, executor: str = "ray", workers: int | None = None,
        address: str | None = None, timeout_s: float | None = None, show_progress: bool = True) -> RunSummary:
    summary = RunSummary()
    clean_partial_writes(results_dir)
    if not jobs:  # everything is done: no guard snapshot, no Ray start
        return summary
    guard = Guard(protected_folders(root, results_dir))
    suspects: dict[tuple, str] = {}  # Ray: jobs running alongside a detected write, failed when they land
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not show_progress, transient=False) as progress:
        overall = progress.add_task("jobs", total=len(jobs))

        def on_result(job: Job, result: dict, running: list[Job] = ()) -> None:
            # Serial: the job that just ended is the only one that ran. Ray: a write seen now may come
            # from any job running alongside; all of them fail (rerun them), none can score.
            changed = guard.check()
            reason = tamper_reason(changed) if changed else suspects.pop(job.key, None)
            if changed:
                suspects.update({j.key: f"{reason} (while this job ran alongside others)" for j in running})
            if reason:
                result = failed_result(job.submission, job.task, job.seed, root, reason, "Tampering",
                                       result["provenance"].get("executor", executor),
                                       result["provenance"].get("wall_time_s", 0.0))
            path = result_path(results_dir, job.submission.name, job.task.id, job.seed)
            write_result(path, result)
            guard.accept(path)
            (summary.done if result["status"] == "ok" else summary.failed).append(result)
            if result["status"] != "ok":
                progress.console.print(f"[red]failed[/red] {escape(job.label)}: {escape(result['error']['reason'])}")
            progress.advance(overall)

        if executor == "serial":
            run_serial(jobs, root, timeout_s, on_result, progress if show_progress else None)
        elif executor == "ray":
            run_ray(jobs, root, timeout_s, on_result, workers, address)
        else:
            raise ValueError(f"unknown executor {executor!r}: use 'ray' or 'serial'")
    return summary
