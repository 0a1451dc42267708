"""Hostile submissions against the scores: each attack ends with honest numbers (those of an honest
twin that trains the same way) or a failed job with a clear reason, and no other file changes.

Attacks: patching torch, patching a harness metric reached through importlib, poisoning the cache,
a detached delayed writer, an in-place edit that restores the file's times, a decode that remembers
z per code tuple at a depth beyond any decode table, exfiltration over the network, and signalling
every process it can see.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from vqbench.results import read_result, result_path
from vqbench.runner import plan, run
from vqbench.sandbox import confinement_in_force
from vqbench.submissions import get_submission
from vqbench.tasks import get_task

from conftest import TINY_TASK, add_task

BIG_K_TASK = TINY_TASK.replace("codebook_size: 16", "codebook_size: 2097152").replace(
    "seeds: [0]", "seeds: [0]\nmetrics: [mse]")  # 2^21 code tuples: past the decode table


needs_namespaces = pytest.mark.skipif(not confinement_in_force().startswith("namespaces"),
                                      reason="this platform refuses Linux namespaces")


def files(project: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for folder in ("results", "submissions", "tasks") for p in (project / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def run_jobs(project: Path, names: list[str], task: str = "synthetic/tiny"):
    results = project / "results"
    jobs, _ = plan([get_submission(n) for n in names], [get_task(task)], [0], results, False)
    return run(jobs, project, results, "serial", show_progress=False)


def result(project: Path, name: str, task: str = "synthetic/tiny") -> dict:
    return read_result(result_path(project / "results", name, task, 0))


@pytest.fixture
def honest(project):
    """The project with MinimalVQ's result on disk (and the k-means reference in the cache)."""
    add_task(project, "tiny", TINY_TASK.replace("resources: {timeout_s: 120}", "resources: {timeout_s: 90, memory_gb: 1}"))
    assert not run_jobs(project, ["minimal"]).failed
    return project


@pytest.mark.parametrize("name", ["attack_patch_torch", "attack_patch_harness", "attack_cache", "attack_utime"])
def test_attacks_on_the_numbers_end_with_honest_numbers(honest, name):
    cache = Path(os.environ["VQBENCH_HOME"])
    before, cached = files(honest), {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    assert not run_jobs(honest, [name]).failed
    attacked = result(honest, name)
    assert attacked["metrics"] == result(honest, "minimal")["metrics"]  # trains exactly as MinimalVQ does
    after = files(honest)
    assert all(after[p] == content for p, content in before.items()), "an existing file changed"
    assert {p: p.read_bytes() for p in cache.rglob("*") if p.is_file() and p in cached} == cached


def test_a_poisoned_cache_entry_is_recomputed_not_used(honest, monkeypatch):
    """Where namespaces are refused a job can write the cache; a broken digest is never believed."""
    entry = next((Path(os.environ["VQBENCH_HOME"]) / "kmeans").glob("*.json"))
    entry.write_text(entry.read_text().replace('"mse": ', '"mse": 1e-30 * '))  # digest no longer matches
    monkeypatch.setenv("VQBENCH_NO_NAMESPACES", "1")
    (honest / "results" / "minimal" / "synthetic" / "tiny" / "seed-0.json").rename(honest / "honest.json")
    assert not run_jobs(honest, ["minimal"]).failed
    assert result(honest, "minimal")["metrics"] == json.loads((honest / "honest.json").read_text())["metrics"]


def test_in_place_edit_with_restored_times_is_caught_without_namespaces(honest, monkeypatch):
    monkeypatch.setenv("VQBENCH_NO_NAMESPACES", "1")
    before = files(honest)
    run_jobs(honest, ["attack_utime"])
    assert result(honest, "attack_utime")["error"]["reason"] == (
        "tampering: the job changed files only the driver may write (results/minimal/synthetic/tiny/seed-0.json); "
        "restored")
    after = files(honest)
    assert all(after[p] == content for p, content in before.items())


@needs_namespaces
def test_a_detached_delayed_writer_dies_with_its_job(honest):
    before = files(honest)
    assert not run_jobs(honest, ["attack_detached"]).failed
    time.sleep(6)  # the writer would have struck after 4 s
    after = files(honest)
    assert all(after[p] == content for p, content in before.items())
    assert result(honest, "attack_detached")["metrics"] == result(honest, "minimal")["metrics"]


def test_memorizing_decode_beyond_the_table_scores_like_its_honest_twin(project):
    add_task(project, "bigk", BIG_K_TASK)
    summary = run_jobs(project, ["attack_memorize", "honest_twin"], "synthetic/bigk")
    assert not summary.failed, summary.failed and summary.failed[0]["error"]
    cheat, twin = result(project, "attack_memorize", "synthetic/bigk"), result(project, "honest_twin", "synthetic/bigk")
    assert cheat["bits_per_token"] == 21.0 and cheat["metrics"] == twin["metrics"]
    assert cheat["metrics"]["quantization_error"] > 0.01  # far from the lossless copy it tried to score


@needs_namespaces
def test_a_job_cannot_reach_the_network(honest, monkeypatch):
    received = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        monkeypatch.setenv("VQBENCH_TEST_PORT", str(server.getsockname()[1]))

        def accept():
            try:
                conn, _ = server.accept()
                received.append(conn.recv(100))
            except OSError:
                pass
        listener = threading.Thread(target=accept)
        listener.start()
        assert not run_jobs(honest, ["attack_network"]).failed
        listener.join()
    assert received == [] and result(honest, "attack_network")["provenance"]["confinement"].startswith("namespaces")


@needs_namespaces
def test_a_job_cannot_signal_its_supervisor(honest):
    summary = run_jobs(honest, ["attack_kill", "two_files"])  # the driver must live to run the second job
    # its /proc is its PID namespace's: all it finds is its init (which ignores the signal from inside)
    # and itself, so the kills reach nobody and the job ends as the honest VQ it otherwise is
    assert sorted(r["submission"] for r in summary.done) == ["attack_kill", "two_files"]
    assert result(honest, "attack_kill")["metrics"] == result(honest, "minimal")["metrics"]


@needs_namespaces
def test_confinement_is_recorded_and_can_be_turned_off(honest, monkeypatch):
    assert result(honest, "minimal")["provenance"]["confinement"] == (
        "namespaces: read-only file systems, private scratch, no network, own PID namespace")
    monkeypatch.setenv("VQBENCH_NO_NAMESPACES", "1")
    assert confinement_in_force().startswith("none: $VQBENCH_NO_NAMESPACES is set")
