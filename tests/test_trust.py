"""Trusted results (vqbench.trust): the ledger, the random draw CI reruns, the tolerance, and the CI
workflow that refuses a pull request's own confirmations."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from vqbench.results import cpu_kind
from vqbench.trust import (CROSS_KIND_RTOL, SAME_KIND_RTOL, checkable, draw_sample, is_confirmed, load_ledger,
                           record, same_cpu_kind, tolerance, within)

REPO = Path(__file__).parent.parent


def test_the_draw_cannot_be_known_in_advance_and_can_be_replayed():
    items = list(range(1000))
    draws = [draw_sample(items, 3) for _ in range(5)]
    assert len({seed for _, seed in draws}) == 5 and len({tuple(d) for d, _ in draws}) == 5
    picked, seed = draws[0]
    assert draw_sample(items, 3, seed) == (picked, seed)
    assert draw_sample(items[:2], 3)[0].__len__() == 2  # fewer candidates than asked: all of them


def test_the_ledger_confirms_exact_bytes_only(tmp_path):
    results = tmp_path / "results"
    path = results / "vq" / "synthetic" / "t" / "seed-0.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"metrics": {"utilization": 0.5}}\n')
    assert not is_confirmed(results, path, load_ledger(results))
    record(results, [path], "test")
    assert is_confirmed(results, path, load_ledger(results))
    path.write_text('{"metrics": {"utilization": 0.9}}\n')  # same length, one digit changed
    assert not is_confirmed(results, path, load_ledger(results))
    (results / "confirmed.json").write_text("not json")  # a broken ledger confirms nothing, never raises
    assert load_ledger(results) == {}


def test_same_kind_means_rounding_and_another_kind_the_measured_spread():
    prov = {"cpu": cpu_kind(), "packages": {"torch": "2.14.1"}, "python": "3.11.7"}
    assert same_cpu_kind(prov, dict(prov))
    assert not same_cpu_kind(prov, {**prov, "cpu": {**prov["cpu"], "torch_capability": "AVX2"}})
    assert not same_cpu_kind({**prov, "cpu": None}, {**prov, "cpu": None})  # unrecorded: not the same kind
    assert tolerance("utilization", True)[0] == SAME_KIND_RTOL
    assert not within("utilization", 0.5, 0.5 * (1 + 10 * SAME_KIND_RTOL), True)
    for metric, rtol in CROSS_KIND_RTOL.items():  # each measured tolerance is used, and is a bound
        assert tolerance(metric, False)[0] == max(rtol, SAME_KIND_RTOL)
        assert within(metric, 1.0, 1.0 + 0.5 * rtol, False) and not within(metric, 1.0, 1.0 + 3 * rtol + 1e-3, False)
    assert tolerance("no_such_metric", False)[0] == SAME_KIND_RTOL  # unmeasured: no slack
    other = {**prov, "cpu": {**prov["cpu"], "torch_capability": "AVX2"}}
    assert checkable(other, {"utilization": 0.5, "mse": 1.0}, prov)  # measured metrics: judged here
    assert not checkable(other, {"utilization": 0.5, "psnr": 20.0}, prov)  # psnr unmeasured: only its own kind
    assert checkable(prov, {"psnr": 20.0}, dict(prov))


def test_ci_refuses_a_pull_request_that_edits_the_ledger_and_blocks_on_the_sampled_reruns():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "validate-submission.yml").read_text())
    steps = workflow["jobs"]["validate"]["steps"]
    guard = next(s for s in steps if "results/confirmed.json" in s.get("run", ""))
    assert "git diff --name-only" in guard["run"] and "exit 1" in guard["run"] and "if" not in guard
    validate = next(s for s in steps if "vqbench validate" in s.get("run", ""))
    assert "--sample" in validate["run"] and not validate.get("continue-on-error")
    assert steps.index(guard) < steps.index(validate)


def test_committed_ledger_entries_name_existing_results():
    """Every entry of the committed ledger is a result file that exists (a renamed task or a removed
    submission must not leave confirmations behind that nothing matches)."""
    results = REPO / "results"
    ledger = json.loads((results / "confirmed.json").read_text()) if (results / "confirmed.json").exists() else {}
    assert all((results / rel).is_file() for rel in ledger)
