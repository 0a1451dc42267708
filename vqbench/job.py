"""One job = one submission x task x seed, run to a result dict. Never raises for a job's own fault:
whatever the submission does wrong becomes a `failed` result with the reason and the traceback.

`run_contained` is the supervisor (the serial driver, or a Ray worker that only supervises). It runs
the three stages of vqbench.stages, each in a contained child of its own (vqbench.sandbox): train
and encode, decode from the snapshot, score in a process that never imported the submission. It
takes nothing from the children on trust but tensors and plain values in the expected places, and
assembles the result (provenance included) itself.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

from vqbench.contract import bits_per_token
from vqbench.families import DataError, get_family
from vqbench.families.sources import fetch
from vqbench.metrics import METRICS
from vqbench.results import provenance
from vqbench.sandbox import ChildOutcome, memory_limit_gb, run_in_child
from vqbench.stages import decode_codes, from_bytes, score, to_bytes, train_and_encode
from vqbench.submissions import Submission

BLOBS = {train_and_encode: ("snapshot", "codes"), decode_codes: ("decoded",), score: ()}


class StageFailed(Exception):
    """A stage ended without what the next one needs; carries the failed result."""

    def __init__(self, result: dict):
        self.result = result


def failed_result(submission: Submission, task, seed: int, root: Path, reason: str, kind: str,
                  executor: str, wall_time_s: float, detail: str | None = None) -> dict:
    """A result for a job that never returned (crashed worker, timeout): built by the driver."""
    return {"submission": submission.name, "task": task.id, "seed": seed, "status": "failed",
            "metrics": {}, "bits_per_token": None, "train": None,
            "error": {"reason": reason, "type": kind, "traceback": detail},
            "provenance": provenance(root, submission.hash, task, "unknown", wall_time_s, executor,
                                            submission.package_versions())}


def _error_problem(value: Any) -> str | None:
    error = value.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("reason"), str):
        return "a failure without a reason"
    return None


def _problem(stage, value: Any, task) -> str | None:
    """Why what a stage's process sent back cannot be used as it is; None when it can."""
    if not isinstance(value, dict):
        return "not a mapping"
    if value.get("error") is not None:
        return _error_problem(value)
    if stage is train_and_encode:
        rates = value.get("rates")
        if not (type(rates) is list and len(rates) == len(task.quantizer.level_sizes)
                and all(type(r) is list and len(r) == 2 and all(type(v) is int for v in r) for r in rates)
                and isinstance(value.get("train"), dict) and isinstance(value.get("phases"), dict)
                and isinstance(value.get("device"), str) and len(value["device"]) <= 20):
            return "not a training report"
    if stage is score:
        get_family(task.family)  # its metric specs are registered from here on
        metrics = value.get("metrics")
        if not isinstance(metrics, dict) or not all(
                v is None or (type(v) in (int, float) and math.isfinite(v)) for v in metrics.values()):
            return "its metrics are not finite numbers"
        if unknown := sorted(str(k)[:40] for k in metrics if k not in METRICS):
            return f"it reports unregistered metrics ({', '.join(unknown[:5])})"
        levels = value.get("levels")
        if not (type(levels) is list and len(levels) == len(task.quantizer.level_sizes)
                and all(type(v) is dict and type(v.get("tokens_per_item")) is int for v in levels)):
            return "not one entry per level"
    return None


def run_contained(submission: Submission, task, seed: int, root: Path, executor: str, timeout_s: float,
                  on_progress: Callable[[int], None] | None = None) -> dict:
    """One job through its three contained stages, to a result. A stage that hung, crashed, sent
    garbage or reported the submission's fault ends the job as a failed result with the reason."""
    start = time.monotonic()
    base = {"submission": submission.name, "task": task.id, "seed": seed}
    phases: dict[str, float] = {}

    confinement: list[str] = []

    def stage(target, args: tuple, progress=None) -> tuple[dict, dict[str, bytes]]:
        left = timeout_s - (time.monotonic() - start)
        runs_submission = target is not score
        outcome = run_in_child(target, args, left, memory_limit_gb(task), progress, confined=runs_submission) \
            if left > 0 else ChildOutcome(failure=f"timeout: job exceeded {timeout_s:.0f} s", kind="JobTimeout")
        if outcome.kind == "JobTimeout":  # the child knew only the time left to it; name the job's limit
            outcome.failure = f"timeout: job exceeded {timeout_s:.0f} s"
        phases[f"{target.__name__}_process"] = outcome.wall_time_s
        if runs_submission and outcome.confinement:
            confinement.append(outcome.confinement)
        name = target.__name__.replace("_", " ")
        if outcome.failure:
            raise StageFailed(failed_result(submission, task, seed, root, outcome.failure, outcome.kind, executor,
                                            time.monotonic() - start, outcome.output_tail or None))
        if (problem := _problem(target, outcome.value, task)) is not None:
            raise StageFailed(failed_result(submission, task, seed, root, f"bad result from the job's process "
                                            f"({name}): {problem}", "BadResult", executor, time.monotonic() - start))
        if outcome.value.get("error") is not None:
            error = {**outcome.value["error"], **({"output_tail": outcome.output_tail} if outcome.output_tail else {})}
            raise StageFailed({**base, "status": "failed", "metrics": {}, "bits_per_token": None, "train": None,
                               "error": error, "provenance": provenance(root, submission.hash, task, "unknown",
                                                                        time.monotonic() - start, executor,
                                                                        submission.package_versions())})
        if missing := [b for b in BLOBS[target] if b not in outcome.blobs]:
            raise StageFailed(failed_result(submission, task, seed, root, f"bad result from the job's process "
                                            f"({name}): it sent no {', '.join(missing)}", "BadResult", executor,
                                            time.monotonic() - start))
        return outcome.value, outcome.blobs

    try:
        fetch_sources(task)  # data and weights reach the cache here: confined stages cannot download or write
        get_family(task.family).prepare(task)
        phases["prepare"] = time.monotonic() - start
        trained, blobs = stage(train_and_encode, (submission, task, seed), on_progress)
        rates = trained["rates"]
        snapshot = from_bytes(blobs["snapshot"], "the snapshot")
        weights = to_bytes({"encoder": snapshot["encoder"], "decoder": snapshot["decoder"]})
        _, decoded = stage(decode_codes, (submission, task, seed, to_bytes(snapshot["quantizers"]), blobs["codes"],
                                          rates))
        scored, _ = stage(score, (task, seed, weights, blobs["codes"], decoded["decoded"], rates))
    except StageFailed as failed:
        failed.result["provenance"].update(phases=_rounded(phases), confinement=_confinement(confinement))
        return failed.result
    except DataError as e:  # from prepare(): harness code, so its message is the failure
        return failed_result(submission, task, seed, root, str(e), type(e).__name__, executor,
                             time.monotonic() - start)
    except Exception as e:  # a snapshot that is not plain tensors
        return failed_result(submission, task, seed, root, f"bad result from the job's process: {e}", "BadResult",
                             executor, time.monotonic() - start)
    result = {**base, "status": "ok", "metrics": scored["metrics"], "bits_per_token": rate(rates, scored["levels"]),
              "error": None, "train": trained["train"]}
    if len(rates) > 1:
        result["levels"] = level_report(task, rates, scored["levels"])
    if scored["unavailable"]:
        result["metrics_unavailable"] = scored["unavailable"]
    phases.update({k: float(v) for k, v in {**trained["phases"], **scored["phases"]}.items()})
    # the device training used (the supervisor's own view can differ: a confined child may not start CUDA)
    result["provenance"] = provenance(root, submission.hash, task, trained["device"], time.monotonic() - start,
                                      executor, submission.package_versions())
    result["provenance"].update(phases=_rounded(phases), confinement=_confinement(confinement))
    return result


def rate(rates: list, levels: list[dict]) -> float:
    """Bits per token; with several levels, per token of the last (finest) level's grid: every level's
    bits per item over the finest level's tokens per item, so a hierarchical model and a single-level
    one on that grid spend the same bits per item exactly when they show the same number."""
    if len(rates) == 1:
        return bits_per_token(*rates[0])
    bits = sum(bits_per_token(*r) * level["tokens_per_item"] for r, level in zip(rates, levels))
    return bits / levels[-1]["tokens_per_item"]


def level_report(task, rates: list, levels: list[dict]) -> list[dict]:
    """Per level of a hierarchical model: its K, what its quantizer declared, its rate and code usage."""
    return [{"level": i, "k": k, "codebook_size": size, "depth": depth, "bits_per_token": bits_per_token(size, depth),
             **{key: float(v) if key != "tokens_per_item" else int(v) for key, v in level.items()}}
            for i, (k, (size, depth), level) in enumerate(zip(task.quantizer.level_sizes, rates, levels))]


def _confinement(reports: list[str]) -> str:
    """What confined the stages that ran submission code ('unknown' if none reported)."""
    return "; ".join(dict.fromkeys(reports)) or "unknown"


def fetch_sources(task) -> None:
    """Every downloadable source of the task's family, verified and cached by harness code before a
    job starts. A source that cannot be fetched is left for the stage that needs it to report."""
    for source in get_family(task.family).sources:
        try:
            fetch(source)
        except DataError:
            pass


def _rounded(phases: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 3) for k, v in phases.items()}
