"""One job = one submission x task x seed, run to a result dict. Never raises for a job's own fault:
whatever the submission does wrong becomes a `failed` result with the reason and the traceback.

`execute_job` runs inside the job's own process (a forked child of the serial driver or of a Ray
worker) under the limits of vqbench.sandbox; `run_contained` is the supervisor's side: it takes
nothing from that process on trust but numbers and text in the expected places.
"""
from __future__ import annotations

import math
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from vqbench.contract import bits_per_token
from vqbench.enforce import JobFailure, check_rate
from vqbench.families import DataError, get_family
from vqbench.metrics import METRICS, MetricContext, build_metrics
from vqbench.results import provenance
from vqbench.sandbox import is_out_of_memory, memory_limit_gb, run_in_child
from vqbench.schema import ConfigError
from vqbench.submissions import Submission
from vqbench.train import evaluate, seed_everything, train

PROGRESS_UPDATES = 100  # step reports per job from a child process


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def execute_job(submission: Submission, task, seed: int, root: Path, executor: str = "serial",
                on_step: Callable[[int], None] | None = None) -> dict:
    start = time.perf_counter()
    device = pick_device()
    result = {"submission": submission.name, "task": task.id, "seed": seed, "status": "ok",
              "metrics": {}, "bits_per_token": None, "error": None, "train": None}
    try:
        seed_everything(seed)
        quantizer = submission.build(task.quantizer.dim, task.quantizer.codebook_size)
        size, depth = check_rate(quantizer, task.quantizer.codebook_size)
        result["bits_per_token"] = bits_per_token(size, depth)
        setup = get_family(task.family).build(task, seed, device)
        # Built right after the setup, before training: some metrics initialise weights (drawing from
        # the seeded RNG) before loading them, so this order is part of what the seed fixes.
        fidelity = build_metrics(task.metrics, MetricContext(task, device, setup.metric_context))
        quantizer.to(device)
        result["train"] = train(setup, quantizer, task, on_step)
        result["metrics"], unavailable = evaluate(setup, quantizer, task, fidelity)
        if unavailable:
            result["metrics_unavailable"] = unavailable
    except (JobFailure, ConfigError, DataError) as e:
        result.update(status="failed", error={"reason": str(e), "type": type(e).__name__,
                                              "traceback": traceback.format_exc(limit=-8)})
    except Exception as e:  # the submission's own bug: record it, never take the run down
        reason = f"{type(e).__name__}: {e}"
        if is_out_of_memory(e):
            reason = f"out of memory: the job passed its limit of {memory_limit_gb(task):g} GB " \
                     f"(resources.memory_gb): {reason}"
        result.update(status="failed", error={"reason": reason, "type": type(e).__name__,
                                              "traceback": traceback.format_exc(limit=-12)})
    result["provenance"] = provenance(root, submission.hash, task, str(device),
                                      time.perf_counter() - start, executor)
    return result


def job_in_child(submission: Submission, task, seed: int, root: str, executor: str, emit) -> dict:
    """The serial executor's child: execute_job, reporting steps to the driver's progress bar."""
    every = max(1, task.train.steps // PROGRESS_UPDATES)
    return execute_job(submission, task, seed, Path(root), executor,
                       on_step=lambda s: emit(s + 1) if (s + 1) % every == 0 else None)


def failed_result(submission: Submission, task, seed: int, root: Path, reason: str, kind: str,
                  executor: str, wall_time_s: float, detail: str | None = None) -> dict:
    """A result for a job that never returned (crashed worker, timeout): built by the driver."""
    return {"submission": submission.name, "task": task.id, "seed": seed, "status": "failed",
            "metrics": {}, "bits_per_token": None, "train": None,
            "error": {"reason": reason, "type": kind, "traceback": detail},
            "provenance": provenance(root, submission.hash, task, "unknown", wall_time_s, executor)}


def _problem(value: Any, submission: Submission, task, seed: int) -> str | None:
    """Why a result reported by a job's process cannot be written as it is; None when it can."""
    if not isinstance(value, dict) or value.get("status") not in ("ok", "failed"):
        return "not a result"
    if (value.get("submission"), value.get("task"), value.get("seed")) != (submission.name, task.id, seed):
        return "it is the result of another job"
    prov = value.get("provenance")
    if not isinstance(prov, dict) or (prov.get("submission_hash"), prov.get("task_hash")) != (submission.hash, task.hash):
        return "its provenance names other code or another task"
    metrics = value.get("metrics")
    if not isinstance(metrics, dict) or not all(
            v is None or (type(v) in (int, float) and math.isfinite(v)) for v in metrics.values()):
        return "its metrics are not finite numbers"
    get_family(task.family)  # its metric specs are registered from here on
    if unknown := sorted(str(k)[:40] for k in metrics if k not in METRICS):
        return f"it reports unregistered metrics ({', '.join(unknown[:5])})"
    if value["status"] == "failed" and not isinstance((value.get("error") or {}).get("reason"), str):
        return "a failed result without a reason"
    return None


def run_contained(submission: Submission, task, seed: int, root: Path, executor: str, timeout_s: float,
                  on_progress: Callable[[int], None] | None = None) -> dict:
    """One job in a contained child (vqbench.sandbox), to a result: what the child sent back is
    checked, and a child that hung, crashed or sent garbage becomes a failed result with the reason."""
    outcome = run_in_child(job_in_child, (submission, task, seed, str(root), executor), timeout_s,
                           memory_limit_gb(task), on_progress)
    if outcome.failure:
        return failed_result(submission, task, seed, root, outcome.failure, outcome.kind, executor,
                             outcome.wall_time_s, outcome.output_tail or None)
    value = outcome.value
    if (problem := _problem(value, submission, task, seed)) is not None:
        return failed_result(submission, task, seed, root, f"bad result from the job's process: {problem}",
                             "BadResult", executor, outcome.wall_time_s)
    if value["status"] == "failed" and outcome.output_tail:
        value["error"]["output_tail"] = outcome.output_tail
    return value
