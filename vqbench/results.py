"""The results store: one JSON per submission x task x seed, written atomically, with provenance.

`results/<submission>/<task-id>/seed-<n>.json`. A result is current only while its submission
hash and task hash match the code and YAML on disk; stale ones stay on disk but never reach the
leaderboard.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import tempfile
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

RESULT_GLOB = "seed-*.json"


def result_path(results_dir: Path, submission: str, task_id: str, seed: int) -> Path:
    return Path(results_dir) / submission / task_id / f"seed-{seed}.json"


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write-then-rename in the same folder: a reader (or a killed run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=2, sort_keys=True, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_result(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def iter_results(results_dir: Path) -> Iterator[tuple[Path, dict[str, Any] | None]]:
    for path in sorted(Path(results_dir).rglob(RESULT_GLOB)):
        yield path, read_result(path)


def why_stale(result: Any, submission_hash: str, task_hash: str) -> str | None:
    """Why `result` is not a result of exactly this submission code and task spec; None when it is.
    The one test of currency: the runner's resume, `validate`'s committed results and the
    leaderboard all ask it."""
    prov = result.get("provenance") if isinstance(result, dict) else None
    if not isinstance(prov, dict):
        return "no provenance"
    if prov.get("submission_hash") != submission_hash:
        return "submission code changed"
    if prov.get("task_hash") != task_hash:
        return "task spec changed"
    return None


def is_done(path: Path, submission_hash: str, task_hash: str) -> bool:
    """A finished, successful result of exactly this code and task already exists (a file of any
    other shape is not one: the job runs again)."""
    result = read_result(path)
    return isinstance(result, dict) and result.get("status") == "ok" and \
        why_stale(result, submission_hash, task_hash) is None


def clean_partial_writes(results_dir: Path) -> int:
    """Remove temp files a killed run left behind; returns how many."""
    leftovers = list(Path(results_dir).rglob(".seed-*.tmp")) if Path(results_dir).exists() else []
    for p in leftovers:
        p.unlink(missing_ok=True)
    return len(leftovers)


@lru_cache(maxsize=None)
def git_state(root: str) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in ("torch", "ray", "torchmetrics", "numpy", "faiss-cpu"):  # faiss-cpu: CPU nearest-code search
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@lru_cache(maxsize=None)
def cpu_kind() -> dict[str, str | None]:
    """What decides a CPU result's last bits besides the code: the CPU model and the kernel paths
    torch (ATen vectorization) and faiss picked for it. Same kind, same bits (one thread, same
    packages); another kind may differ after training (vqbench.trust's cross-kind tolerance)."""
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    import faiss
    import torch
    config = getattr(faiss, "SIMDConfig", None)  # faiss >= 1.13 dispatches at run time ($FAISS_SIMD_LEVEL)
    return {"machine": platform.machine(), "model": model or platform.processor() or None,
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "faiss_simd": config.get_level_name() if config else None}


def machine_kind(wrapped: dict[str, str | None] | None = None) -> dict[str, Any]:
    """The provenance fields that decide a CPU result's bits besides code and seed (vqbench.trust
    compares them): CPU kind, package versions (`wrapped`: the submission's own), Python."""
    return {"cpu": cpu_kind(), "packages": {**package_versions(), **(wrapped or {})},
            "python": platform.python_version()}


def provenance(root: Path, submission_hash: str, task, device: str, wall_time_s: float,
               executor: str, wrapped: dict[str, str | None] | None = None) -> dict[str, Any]:
    """`wrapped`: versions of the packages the submission requires (Submission.package_versions),
    recorded beside the harness's own in `packages`."""
    from vqbench import __version__
    return {
        "vqbench_version": __version__,
        **git_state(str(root)),
        "task_hash": task.hash,
        "task_version": task.version,
        "submission_hash": submission_hash,
        **machine_kind(wrapped),
        "device": device,
        "host": socket.gethostname(),
        "executor": executor,
        "wall_time_s": round(wall_time_s, 3),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
