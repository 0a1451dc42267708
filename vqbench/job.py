"""One job = one submission x task x seed, run to a result dict. Never raises for a job's own fault:
whatever the submission does wrong becomes a `failed` result with the reason and the traceback."""
from __future__ import annotations

import math
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from vqbench.data.images import DataRootError
from vqbench.data.sources import DataSourceError
from vqbench.families import get_family
from vqbench.results import provenance
from vqbench.schema import ConfigError
from vqbench.submissions import Submission
from vqbench.train import JobFailure, evaluate, seed_everything, train


class JobTimeout(BaseException):
    """Raised inside a job by the serial executor's alarm; BaseException so submissions can't swallow it."""


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
        bits, budget = quantizer.bits_per_token, math.log2(task.quantizer.codebook_size)
        result["bits_per_token"] = bits
        if bits > budget + 1e-9:
            raise JobFailure(f"rate budget exceeded: {bits:.3f} bits/token > log2(K) = {budget:.3f} "
                             f"(depth {quantizer.depth} x codebook {quantizer.codebook_size})")
        setup = get_family(task.family).build(task, seed, device)
        quantizer.to(device)
        result["train"] = train(setup, quantizer, task, on_step)
        result["metrics"], unavailable = evaluate(setup, quantizer, task)
        if unavailable:
            result["metrics_unavailable"] = unavailable
    except JobTimeout as e:
        result.update(status="failed", error={"reason": f"timeout: {e}", "type": "JobTimeout", "traceback": None})
    except (JobFailure, ConfigError, DataRootError, DataSourceError) as e:
        result.update(status="failed", error={"reason": str(e), "type": type(e).__name__,
                                              "traceback": traceback.format_exc(limit=-8)})
    except Exception as e:  # the submission's own bug: record it, never take the run down
        result.update(status="failed", error={"reason": f"{type(e).__name__}: {e}", "type": type(e).__name__,
                                              "traceback": traceback.format_exc(limit=-12)})
    result["provenance"] = provenance(root, submission.hash, task, str(device),
                                      time.perf_counter() - start, executor)
    return result


def failed_result(submission: Submission, task, seed: int, root: Path, reason: str, kind: str,
                  executor: str, wall_time_s: float, detail: str | None = None) -> dict:
    """A result for a job that never returned (crashed worker, timeout): built by the driver."""
    return {"submission": submission.name, "task": task.id, "seed": seed, "status": "failed",
            "metrics": {}, "bits_per_token": None, "train": None,
            "error": {"reason": reason, "type": kind, "traceback": detail},
            "provenance": provenance(root, submission.hash, task, "unknown", wall_time_s, executor)}
