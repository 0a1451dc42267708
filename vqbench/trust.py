"""Which committed results a reader can trust: those a run the project controls produced or reproduced.

A submission's pull request carries its own result files, and nothing in a file proves that a run
made it. So the project keeps a ledger, `results/confirmed.json`: for each result file, the
sha256 of the exact bytes that a trusted run wrote (`vqbench run --trusted`, run by maintainers on
main) or reproduced to rounding on the CPU kind that produced them (`vqbench validate NAME --sample N
--record`; a match within the wider cross-kind tolerance is not recorded). CI
refuses a pull request that changes the ledger, so a submitter cannot confirm their own numbers,
and an edited result no longer matches its digest. The leaderboard labels every result without a
matching entry "self-reported".

Reproducing across CPU kinds: a CPU run is bit-identical on the same kind (one thread, same
packages), but another kind's kernels (AVX-512 vs AVX2 vs none; MKL, oneDNN, faiss) change last bits
that training amplifies. `CROSS_KIND_RTOL` is measured, not guessed: bench/cross_cpu.py reran a
sample of committed results under other kernel paths, and docs/trust.md has the table.
"""
from __future__ import annotations

import hashlib
import json
import random
from datetime import datetime, timezone
from pathlib import Path

from vqbench.results import write_result

LEDGER = "confirmed.json"  # under the results folder; CI refuses pull requests that change it

# Same CPU kind (model, torch and faiss kernel levels, packages): the rerun must match to rounding.
SAME_KIND_RTOL, SAME_KIND_ATOL = 1e-6, 1e-9
# Another CPU kind: per metric, relative tolerance = 2x the largest relative difference that
# bench/cross_cpu.py measured on 24 committed synthetic results rerun with AVX2 and with SSE-level
# kernels (2026-11-26, docs/trust.md), rounded up; absolute 1e-4 for values near zero. Training
# is chaotic, so another kind acts much like another seed on collapsed runs (utilization moved by
# up to 44%): a cross-kind match is evidence against gross fabrication, never a confirmation
# (--record enters same-kind, exact reproductions only). A metric not listed (a family whose
# cross-kind spread was not measured: image) must match as on the same kind.
CROSS_KIND_RTOL: dict[str, float] = {
    "codebook_rank": 0.58, "dead_codes": 0.29, "distortion_ratio": 0.014, "emitted_codes": 0.0,
    "latent_rank": 0.19, "mse": 0.014, "perplexity": 0.22, "perplexity_ratio": 0.22,
    "quantization_error": 0.28, "utilization": 0.89,
}
CROSS_KIND_ATOL = 1e-4


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ledger_path(results_dir: Path) -> Path:
    return Path(results_dir) / LEDGER


def load_ledger(results_dir: Path) -> dict[str, dict]:
    """{result path relative to results_dir: entry}; a missing or unreadable ledger confirms nothing."""
    try:
        data = json.loads(ledger_path(results_dir).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("sha256"), str)} \
        if isinstance(data, dict) else {}


def is_confirmed(results_dir: Path, path: Path, ledger: dict[str, dict]) -> bool:
    """The file's bytes are exactly those a trusted run wrote or reproduced."""
    entry = ledger.get(Path(path).relative_to(results_dir).as_posix())
    return entry is not None and entry["sha256"] == file_digest(path)


def record(results_dir: Path, paths: list[Path], how: str) -> Path:
    """Add (or renew) the ledger entries of `paths`, written atomically; returns the ledger's path."""
    results_dir = Path(results_dir)
    ledger = load_ledger(results_dir)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for path in paths:
        ledger[Path(path).relative_to(results_dir).as_posix()] = {"sha256": file_digest(path), "how": how,
                                                                  "date": now}
    write_result(ledger_path(results_dir), ledger)  # the results' own atomic, sorted JSON write
    return ledger_path(results_dir)


def draw_sample(candidates: list, n: int, seed: int | None = None) -> tuple[list, int]:
    """`n` of `candidates` at random, and the seed used. Without a seed one is drawn from the OS at
    run time, so a submitter cannot know in advance which results CI will rerun; the seed is
    printed, so the same draw can be replayed."""
    if seed is None:
        seed = random.SystemRandom().randrange(2 ** 32)
    return random.Random(seed).sample(candidates, min(n, len(candidates))), seed


def same_cpu_kind(a: dict, b: dict) -> bool:
    """Two results' provenance: same CPU model and kernel levels, same packages and Python."""
    return all(a.get(k) is not None and a.get(k) == b.get(k) for k in ("cpu", "packages", "python"))


def checkable(provenance: dict, metrics: dict, here: dict) -> bool:
    """Can a rerun on this machine (`here`: its provenance fields cpu, packages, python) judge this
    result: same CPU kind, or every metric has a measured cross-kind tolerance?"""
    return same_cpu_kind(provenance, here) or all(m in CROSS_KIND_RTOL for m in metrics)


def tolerance(metric: str, same_kind: bool) -> tuple[float, float]:
    """(relative, absolute) tolerance for a rerun of `metric`."""
    if same_kind or metric not in CROSS_KIND_RTOL:
        return SAME_KIND_RTOL, SAME_KIND_ATOL
    return max(CROSS_KIND_RTOL[metric], SAME_KIND_RTOL), CROSS_KIND_ATOL


def within(metric: str, committed: float, rerun: float, same_kind: bool) -> bool:
    """|rerun - committed| <= max(rtol x |committed|, atol): relative to the committed value, as
    bench/cross_cpu.py measures it."""
    rtol, atol = tolerance(metric, same_kind)
    return abs(rerun - committed) <= max(rtol * abs(committed), atol)
