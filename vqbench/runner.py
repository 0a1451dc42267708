"""Fan jobs (submissions x tasks x seeds) out to Ray or run them serially; write each result as it lands.

The driver alone writes result files, one atomic rename each, so a crash of any worker, or a
SIGKILL of the driver, leaves only whole files behind, and a rerun picks up what is missing.
Every job runs in a process of its own (a forked child of the serial driver or of a Ray worker) under
vqbench.sandbox's limits, and a guard undoes (and fails the job for) any write into results/,
submissions/, tasks/ or leaderboard/ made while it ran.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vqbench.job import failed_result, run_contained
from vqbench.results import clean_partial_writes, is_done, result_path, write_result
from vqbench.sandbox import Guard, protected_folders, start_fork_server, tamper_reason
from vqbench.submissions import Submission
from vqbench.tasks import not_applicable
from vqbench.trust import record

console = Console(stderr=True)
WORKER_GRACE_S = 60.0  # Ray backstop on top of a job's limit: a worker's first job starts its fork server
ACTOR_START_S = 300.0  # with no worker of a resource shape up after this long, that shape's jobs fail
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
    """Jobs still to run, and how many were skipped because an identical result exists (resume).
    Tasks not applicable to a submission are left out (see not_applicable)."""
    todo, skipped = [], 0
    for sub in submissions:
        for task in [t for t in tasks if not_applicable(sub, t) is None]:
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


def worker_env() -> dict[str, str]:
    """What a Ray worker's environment gets from the driver's: one thread, the serial executor's CPU
    priority (Ray starts workers at nice 15, so on a shared machine their jobs yield to every other
    process; Ray's own job supervisor resets it the same way), and every VQBENCH_* setting (data
    folders, cache home, project root, family path), so workers on other nodes read the same."""
    return {"OMP_NUM_THREADS": "1", "RAY_worker_niceness": "0",
            **{k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIX)}}


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


class JobSupervisor:
    """A warm Ray worker, one per slot: it imports torch once, then runs job after job, each in a fresh
    forked, contained child (run_contained, exactly as the serial executor does), so the worker (and
    what it returns to the driver) never runs submission code; per-job limits and crash capture are
    the child's, as before."""

    def __init__(self):
        start_fork_server()  # its imports overlap the actor's handshake with the driver

    def node(self) -> str:
        import ray
        return ray.get_runtime_context().get_node_id()

    def run(self, submission, task, seed: int, root: str, timeout_s: float) -> dict:
        result = run_contained(submission, task, seed, Path(root), "ray", timeout_s)
        result["provenance"]["ray_node"] = self.node()
        return result


@dataclass
class _Running:
    job: Job
    actor: object
    start: float
    deadline: float


def _shapes(jobs: list[Job], has_gpu: bool) -> dict[tuple[float, float], list[Job]]:
    """Jobs by the Ray resources one of them needs, (cpus, gpus), in first-seen order."""
    groups: dict[tuple[float, float], list[Job]] = {}
    for job in jobs:
        shape = (job.task.resources.cpus, job.task.resources.gpus if has_gpu else 0.0)
        groups.setdefault(shape, []).append(job)
    return groups


def _capacity(resources: dict, shape: tuple[float, float], jobs: int) -> int:
    """How many workers of this shape the cluster holds at once (its totals; at least one)."""
    cpus, gpus = shape
    n = int(resources.get("CPU", 1) // cpus) if cpus > 0 else jobs
    if gpus > 0:
        n = min(n, int(resources.get("GPU", 0) // gpus))
    return max(1, min(n, jobs))


class _WarmPool:
    """Warm workers of one resource shape running a list of jobs; a worker that dies, or that a job's
    backstop kills, is replaced while jobs remain."""

    def __init__(self, ray, shape: tuple[float, float], size: int, root: Path, timeout_s: float | None, on_result):
        self.ray, self.shape, self.size, self.root, self.timeout_s, self.on_result = \
            ray, shape, size, root, timeout_s, on_result
        self.cls = ray.remote(num_cpus=shape[0], num_gpus=shape[1], max_restarts=0,
                              max_task_retries=0)(JobSupervisor)
        self.starting: dict = {}  # ready probe -> (actor, since)
        self.idle: list = []
        self.running: dict = {}  # job ref -> _Running
        self.pending: list[Job] = []
        self.start_error = ""

    def run(self, jobs: list[Job]) -> None:
        self.pending = list(jobs)
        try:
            for _ in range(self.size):
                self._start_worker()
            while self.pending or self.running:
                while self.pending and self.idle:
                    self._submit(self.pending.pop(0), self.idle.pop(0))
                if self._stalled():
                    self._fail_pending()
                    break
                self._wait()
        finally:
            for actor in [*self.idle, *(r.actor for r in self.running.values()),
                          *(a for a, _ in self.starting.values())]:
                self.ray.kill(actor, no_restart=True)

    def _start_worker(self) -> None:
        actor = self.cls.remote()
        self.starting[actor.node.remote()] = (actor, time.monotonic())

    def _submit(self, job: Job, actor) -> None:
        limit = self.timeout_s or job.task.resources.timeout_s
        ref = actor.run.remote(job.submission, job.task, job.seed, str(self.root), limit)
        now = time.monotonic()
        self.running[ref] = _Running(job, actor, now, now + self._backstop(job, limit))

    def _backstop(self, job: Job, limit: float) -> float:
        """Seconds after which the driver gives up on a job's worker. The worker enforces `limit` on its
        child; this catches a worker that itself stops answering (plus time for a worker's first job
        to start its fork server)."""
        return limit + WORKER_GRACE_S

    def _stalled(self) -> bool:
        """No worker is running, idle or still within its start time, and jobs wait."""
        now = time.monotonic()
        return bool(self.pending) and not self.running and not self.idle and \
            all(now - since > ACTOR_START_S for _, since in self.starting.values())

    def _fail_pending(self) -> None:
        cpus, gpus = self.shape
        reason = self.start_error or (f"no Ray worker with {cpus:g} CPU and {gpus:g} GPU started within "
                                      f"{ACTOR_START_S:.0f} s: the cluster lacks the resources")
        for job in self.pending:
            self._report(job, failed_result(job.submission, job.task, job.seed, self.root, reason,
                                            "WorkerStartError", "ray", 0.0))
        self.pending = []

    def _wait(self) -> None:
        now = time.monotonic()
        deadlines = [r.deadline for r in self.running.values()] + \
                    [since + ACTOR_START_S for _, since in self.starting.values() if since + ACTOR_START_S > now]
        timeout = max(0.05, min(deadlines) - now) if deadlines else 1.0
        ready, _ = self.ray.wait([*self.running, *self.starting], num_returns=1, timeout=timeout)
        for ref in ready:
            if ref in self.starting:
                self._started(ref)
            else:
                self._finished(ref)
        self._expire()

    def _started(self, probe) -> None:
        actor, _ = self.starting.pop(probe)
        try:
            self.ray.get(probe)
            self.idle.append(actor)
        except self.ray.exceptions.RayError as e:
            self.start_error = f"a Ray worker failed to start: {_first_line(e)}"
            self.ray.kill(actor, no_restart=True)

    def _finished(self, ref) -> None:
        done = self.running.pop(ref)
        job, elapsed = done.job, time.monotonic() - done.start
        try:
            result = self.ray.get(ref)
            self.idle.append(done.actor)
        except self.ray.exceptions.RayTaskError as e:  # the supervisor raised: the worker itself is fine
            result = _worker_failure(e, job, self.root, elapsed)
            self.idle.append(done.actor)
        except self.ray.exceptions.RayError as e:  # the worker died or cannot be reached: a new one
            result = _worker_failure(e, job, self.root, elapsed)
            self._replace(done.actor)
        self._report(job, result)

    def _expire(self) -> None:
        now = time.monotonic()
        for ref in [ref for ref, r in self.running.items() if now >= r.deadline]:
            done = self.running.pop(ref)
            self._replace(done.actor)  # an actor's task cannot be cancelled by force: end the worker
            self._report(done.job, failed_result(
                done.job.submission, done.job.task, done.job.seed, self.root,
                f"timeout: job exceeded {done.deadline - done.start:.0f} s and was cancelled", "JobTimeout",
                "ray", now - done.start))

    def _replace(self, actor) -> None:
        self.ray.kill(actor, no_restart=True)
        if len(self.pending) > len(self.idle) + len(self.starting):
            self._start_worker()

    def _report(self, job: Job, result: dict) -> None:
        self.on_result(job, result, [r.job for r in self.running.values()])


def _first_line(e: BaseException) -> str:
    """What went wrong, in one line: a RayTaskError's own text starts with Ray's colour-coded
    'ray::task() (pid=...)' header, so its cause is named instead."""
    cause = getattr(e, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _worker_failure(e: Exception, job: Job, root: Path, elapsed: float) -> dict:
    """A failed result naming what went wrong with the job's worker (not with the job's own child)."""
    from ray.exceptions import RayActorError
    if isinstance(e, RayActorError):
        return failed_result(job.submission, job.task, job.seed, root, "worker crashed: the Ray worker "
                             "supervising the job died (killed, out of memory or its node lost)",
                             "WorkerCrashedError", "ray", elapsed, str(e))
    return failed_result(job.submission, job.task, job.seed, root, f"{type(e).__name__}: {_first_line(e)}",
                         type(e).__name__, "ray", elapsed, str(e))


def run_ray(jobs: list[Job], root: Path, timeout_s: float | None, on_result: Callable[[Job, dict, list[Job]], None],
            workers: int | None = None, address: str | None = None) -> None:
    """Ray fan-out over warm workers: one long-lived actor per slot (per resource shape), each running
    its jobs one by one in forked, contained children. No job: Ray is not started."""
    if not jobs:
        return
    ray = _ray_init(workers, address)
    try:
        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
        # Shapes run one after another: a worker holds its CPUs/GPUs while it lives, so pools of
        # different shapes side by side could starve each other.
        for shape, group in _shapes(jobs, has_gpu).items():
            size = _capacity(ray.cluster_resources(), shape, len(group))
            _WarmPool(ray, shape, size, root, timeout_s, on_result).run(group)
    finally:
        ray.shutdown()


def run(jobs: list[Job], root: Path, results_dir: Path, executor: str = "ray", workers: int | None = None,
        address: str | None = None, timeout_s: float | None = None, show_progress: bool = True,
        trusted: bool = False) -> RunSummary:
    """Run the jobs, writing each result as it lands. `trusted`: the run is one the project controls,
    and each successful result it writes is entered in the ledger (vqbench.trust)."""
    summary = RunSummary()
    clean_partial_writes(results_dir)
    if not jobs:  # everything is done: no guard snapshot, no Ray start
        return summary
    guard = Guard(protected_folders(root, results_dir))
    suspects: dict[tuple, str] = {}  # Ray: jobs running alongside a detected write, failed when they land
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=console, disable=not show_progress,
                  transient=False) as progress:
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
            if trusted and result["status"] == "ok":
                guard.accept(record(results_dir, [path], f"produced by vqbench run --trusted at "
                                                         f"{result['provenance'].get('git_commit')}"))
            (summary.done if result["status"] == "ok" else summary.failed).append(result)
            if result["status"] != "ok":
                progress.console.print(f"[red]failed[/red] {escape(job.label)}: {escape(result['error']['reason'])}")
            elif show_progress:  # a line per finished job: the bar alone says nothing about which
                progress.console.print(f"[green]done[/green] {escape(job.label)} "
                                       f"({result['provenance'].get('wall_time_s', 0):.0f} s)")
            progress.advance(overall)

        if executor == "serial":
            run_serial(jobs, root, timeout_s, on_result, progress if show_progress else None)
        elif executor == "ray":
            run_ray(jobs, root, timeout_s, on_result, workers, address)
        else:
            raise ValueError(f"unknown executor {executor!r}: use 'ray' or 'serial'")
    return summary
