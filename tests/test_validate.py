"""`vqbench validate`: the report for good submissions, each bad one, --reproduce, and hostile text."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from vqbench.cli import main
from vqbench.results import result_path
from vqbench.runner import plan, run
from vqbench.submissions import get_submission
from vqbench.tasks import get_task
from vqbench.validate import CONTRACT_CHECKS, SOURCE_CHECK, validate

from conftest import REPO, TINY_TASK, add_task

SMOKE = "smoke run: synthetic/smoke through the runner (sandbox, rate-enforcing evaluation)"
CHECK_COUNT = 3 + len(CONTRACT_CHECKS) + 2  # schema, source, import; contract; files; smoke
FILES = "files: the contract checks wrote nothing into results/, submissions/, tasks/, leaderboard/"


def contract(title_start: str) -> str:
    return next(f"contract: {t}" for t, _ in CONTRACT_CHECKS if t.startswith(title_start))


@pytest.mark.parametrize("name", ["minimal", "vq"])
def test_good_submissions_pass_every_check(project, capsys, name):
    shutil.copytree(REPO / "submissions" / "vq", project / "submissions" / "vq")
    assert main(["validate", name]) == 0
    report = capsys.readouterr().out.splitlines()
    entries = [line for line in report if line.startswith(("PASS", "FAIL"))]
    assert len(entries) == CHECK_COUNT and all(line.startswith("PASS  ") for line in entries), report
    assert any(line.startswith(f"PASS  {SMOKE}: utilization ") for line in entries)
    assert report[-1] == f"{CHECK_COUNT} check(s), 0 failed: the submission is valid"


# name -> {failed check: words its reason contains}; exactly these checks fail. The decode cheats
# break the contract (validate refuses them) but their smoke run passes: it scores them honestly,
# from a decode of the trained snapshot (tests/test_faults.py).
BAD = {
    "cheat_cache": {contract("decode(codes) equals z_q"): "differs from z_q in eval mode",
                    contract("decode ignores"): "changed after forward() saw other inputs"},
    "cheat_passthrough": {contract("decode(codes) equals z_q"): "differs from z_q in eval mode"},
    "cheat_eval_rate": {contract("rate"): "eval mode: rate budget exceeded: 16.000 bits/token > log2(K) = 8.000",
                        SMOKE: "evaluation: rate budget exceeded"},
    "no_gradient": {contract("gradient"): "no gradient reaches z through z_q"},
    "nan_output": {SMOKE: "non-finite loss at training step 5"},
    # confined: every file system is read-only to the checks and the smoke run's stages
    "tampers": {contract("rate"): "OSError: [Errno 30] Read-only file system",
                SMOKE: "OSError: [Errno 30] Read-only file system"},
}


def test_without_namespaces_the_guard_undoes_writes(project, monkeypatch):
    monkeypatch.setenv("VQBENCH_NO_NAMESPACES", "1")
    before = {p: p.read_bytes() for p in (project / "submissions").rglob("*.py")}
    failed = {c.name: c.detail for c in validate("tampers", project) if not c.ok}
    reason = ("tampering: the job changed files only the driver may write "
              "(results/tampers/synthetic/tiny/seed-9.json, submissions/minimal/quantizer.py); restored")
    assert failed == {FILES: reason, SMOKE: reason}
    assert {p: p.read_bytes() for p in (project / "submissions").rglob("*.py")} == before


@pytest.mark.parametrize("name", list(BAD))
def test_bad_submissions_fail_exactly_the_checks_they_break(project, name):
    before = {p: p.read_bytes() for p in (project / "submissions").rglob("*.py")}
    checks = validate(name, project)
    failed = {c.name: c.detail for c in checks if not c.ok}
    assert set(failed) == set(BAD[name]), failed
    assert before == {p: p.read_bytes() for p in (project / "submissions").rglob("*.py")}
    for check, words in BAD[name].items():
        assert words in failed[check], (check, failed[check])
    assert len(checks) == CHECK_COUNT


@pytest.mark.parametrize("name, first, words", [
    ("cheat_float_codes", contract("forward"), "train mode: codes must be an int64 tensor, got torch.float32"),
    ("cheat_out_of_range", contract("forward"), "train mode: codes outside [0, 256)"),
    ("segfaults", contract("rate"), "worker crashed: the job's process died (killed by SIGSEGV"),
    ("memory_hog", contract("rate"), "can't allocate memory"),
])
def test_codes_crashes_and_memory_fail_their_checks_and_the_smoke_run(project, name, first, words):
    failed = {c.name: c.detail for c in validate(name, project) if not c.ok}
    assert words in failed[first], failed
    assert SMOKE in failed


def test_a_hanging_submission_cannot_hang_validate(project):
    failed = {c.name: c.detail for c in validate("hangs", project, timeout_s=3) if not c.ok}
    assert failed[contract("rate")] == "timeout: job exceeded 3 s (dim 8, K 256)"
    assert failed[contract("forward")] == "not run: an earlier check did not finish"
    assert failed[SMOKE] == "timeout: job exceeded 3 s"


def test_source_reaching_into_the_harness_is_refused(project):
    code = project / "submissions" / "minimal" / "quantizer.py"
    code.write_text("import gc\nimport vqbench.train\n" + code.read_text())
    failed = {c.name: c.detail for c in validate("minimal", project) if not c.ok}
    assert list(failed) == [SOURCE_CHECK]
    assert SOURCE_CHECK == ("source: imports only the public API (vqbench, .contract, .ops, .kmeans, .adapters); "
                            "no gc/inspect/ctypes/frames")
    assert failed[next(iter(failed))] == "quantizer.py:1: imports gc; quantizer.py:2: imports vqbench.train"


def test_broken_schema_stops_early_and_exits_1(project, capsys):
    yaml = project / "submissions" / "minimal" / "submission.yaml"
    yaml.write_text(yaml.read_text() + "homepage: x\n")
    assert main(["validate", "minimal"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  schema: submission.yaml: " in out and "unknown key" in out and "1 check(s), 1 failed" in out


def test_control_characters_in_reasons_do_not_reach_the_terminal(project, capsys):
    code = project / "submissions" / "raises" / "quantizer.py"
    code.write_text(code.read_text().replace('"fixture exploded on purpose"', '"\\x1b[2J\\x1b]0;owned\\x07 boom"'))
    assert main(["validate", "raises"]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "?[2J?]0;owned? boom" in out


def test_reproduce_matches_a_committed_result_and_names_a_metric_that_differs(project):
    results = project / "results"
    jobs, _ = plan([get_submission("minimal")], [get_task("synthetic/tiny")], [0], results, False)
    assert not run(jobs, Path(os.environ["VQBENCH_ROOT"]), results, "serial", show_progress=False).failed
    checks = validate("minimal", project, results, "synthetic/tiny", do_reproduce=True)
    repro = checks[-1]
    assert repro.ok and repro.name == "reproduce synthetic/tiny seed 0", repro.detail
    assert repro.detail.splitlines()[0] == "same CPU kind: rounding only"
    assert "difference 0 (rel 0, allowed rel 1e-06" in repro.detail and "MISMATCH" not in repro.detail

    path = result_path(results, "minimal", "synthetic/tiny", 0)
    committed = json.loads(path.read_text())
    committed["metrics"]["mse"] *= 1.001
    path.write_text(json.dumps(committed))
    repro = validate("minimal", project, results, "synthetic/tiny", do_reproduce=True)[-1]
    mismatched = [line for line in repro.detail.splitlines() if "MISMATCH" in line]
    assert not repro.ok and len(mismatched) == 1 and mismatched[0].startswith("mse: committed ")


def test_a_sampled_reproduction_is_drawn_at_run_time_and_recorded_only_when_it_matches(project, capsys):
    """--sample draws from the OS unless a seed is given (the submitter cannot know which results CI
    reruns); --record enters a reproduced result in the ledger, by the digest of its exact bytes."""
    from vqbench.trust import is_confirmed, load_ledger
    results = project / "results"
    add_task(project, "tiny-alt", TINY_TASK.replace("steps: 30", "steps: 25"))
    tasks = [get_task("synthetic/tiny"), get_task("synthetic/tiny-alt")]
    jobs, _ = plan([get_submission("minimal")], tasks, [0, 1], results, False)
    assert not run(jobs, Path(os.environ["VQBENCH_ROOT"]), results, "serial", show_progress=False).failed
    assert main(["validate", "minimal", "--reproduce", "--sample", "2", "--record"]) == 0
    out = capsys.readouterr().out
    drawn = re.findall(r"PASS  reproduce (\S+) seed (\d) \(2 of 4 drawn with --sample-seed (\d+)\)", out)
    assert len(drawn) == 2, out
    ledger = load_ledger(results)
    paths = [result_path(results, "minimal", t, int(s)) for t, s, _ in drawn]
    assert sorted(ledger) == sorted(p.relative_to(results).as_posix() for p in paths)
    assert all(is_confirmed(results, p, ledger) for p in paths)
    # the same seed replays the same draw
    again = validate("minimal", project, results, do_reproduce=True, sample=2, sample_seed=int(drawn[0][2]))
    assert sorted(c.name.split(" (")[0] for c in again[-2:]) == sorted(f"reproduce {t} seed {s}" for t, s, _ in drawn)

    edited = paths[0]  # a confirmed file edited afterwards is no longer confirmed, and does not reproduce
    result = json.loads(edited.read_text())
    result["metrics"]["utilization"] = min(1.0, result["metrics"]["utilization"] + 0.25)
    edited.write_text(json.dumps(result))
    assert not is_confirmed(results, edited, load_ledger(results))
    task, seed = drawn[0][0], int(drawn[0][1])
    checks = validate("minimal", project, results, task, seed, do_reproduce=True, record_confirmed=True)
    assert not checks[-1].ok and not is_confirmed(results, edited, load_ledger(results))


def test_reproduce_without_a_committed_result_says_so(project):
    repro = validate("minimal", project, project / "results", "synthetic/tiny", do_reproduce=True)[-1]
    assert not repro.ok and repro.detail.startswith("no current successful result of task 'synthetic/tiny'")


def test_the_public_api_is_written_once():
    """docs/submitting.md lists exactly what the source scan allows (vqbench.contract.PUBLIC_MODULES)."""
    from vqbench.contract import PUBLIC_MODULES
    docs = (Path(__file__).parent.parent / "docs" / "submitting.md").read_text()
    listed = set(re.findall(r"`(vqbench(?:\.\w+)?)`", docs.split("may\nimport only", 1)[1].split("refused", 1)[0]))
    assert listed == set(PUBLIC_MODULES)


def test_a_result_no_rerun_here_can_judge_is_not_drawn_and_is_reported(project):
    """From another CPU kind, with a metric whose cross-kind spread was never measured (an image
    metric), exact equality would fail honest work: --sample leaves it out and says so."""
    results = project / "results"
    jobs, _ = plan([get_submission("minimal")], [get_task("synthetic/tiny")], [0, 1], results, False)
    assert not run(jobs, Path(os.environ["VQBENCH_ROOT"]), results, "serial", show_progress=False).failed
    path = result_path(results, "minimal", "synthetic/tiny", 1)
    other = json.loads(path.read_text())
    other["provenance"]["cpu"] = {**other["provenance"]["cpu"], "torch_capability": "AVX2"}
    other["metrics"]["psnr"] = 20.0
    path.write_text(json.dumps(other))
    checks = validate("minimal", project, results, do_reproduce=True, sample=5)
    skip, drawn = checks[-2:]
    assert skip.ok and skip.name == "reproduce: 1 of 2 results not drawn" and "not measured" in skip.detail
    assert drawn.ok and drawn.name == "reproduce synthetic/tiny seed 0 (1 of 1 drawn with --sample-seed " \
        + drawn.name.rsplit(" ", 1)[1], drawn.name
