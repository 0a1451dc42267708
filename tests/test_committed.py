"""What is committed is consistent: leaderboard/ is exactly what results/ gives, and every committed
result is complete, within its rate budget and carries its provenance."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from vqbench.leaderboard import check_leaderboard
from vqbench.metrics import CODE_METRICS
from vqbench.results import iter_results
from vqbench.tasks import load_registry

REPO = Path(__file__).resolve().parent.parent
RESULTS = list(iter_results(REPO / "results"))


def test_committed_leaderboard_is_what_results_give(monkeypatch):
    monkeypatch.setenv("VQBENCH_ROOT", str(REPO))
    assert check_leaderboard(REPO / "results", REPO / "leaderboard", REPO) == []


@pytest.mark.skipif(not RESULTS, reason="no committed results")
def test_committed_results_are_complete_and_within_budget():
    tasks = load_registry(REPO)
    for path, result in RESULTS:
        assert result is not None, f"{path} is not valid JSON"
        prov = result["provenance"]
        for key in ("vqbench_version", "git_commit", "task_hash", "submission_hash", "packages", "device",
                    "wall_time_s", "date"):
            assert key in prov, f"{path}: provenance lacks {key}"
        if result["status"] != "ok":
            assert result["error"]["reason"], path
            continue
        task = tasks.get(result["task"])
        if task is not None and task.quantizer.levels:  # each level within its own K; the total as job.rate says
            levels = result["levels"]
            assert [lv["k"] for lv in levels] == task.quantizer.level_sizes, path
            assert all(lv["bits_per_token"] <= math.log2(lv["k"]) + 1e-9 for lv in levels), path
            per_item = sum(lv["bits_per_token"] * lv["tokens_per_item"] for lv in levels)
            assert abs(result["bits_per_token"] - per_item / levels[-1]["tokens_per_item"]) < 1e-9, path
        elif task is not None:
            assert result["bits_per_token"] <= math.log2(task.quantizer.codebook_size) + 1e-9, path
        for name in CODE_METRICS:
            assert name in result["metrics"], f"{path}: {name} missing"
        assert 0 < result["metrics"]["utilization"] <= 1, path
