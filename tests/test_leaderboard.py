"""Leaderboard: generated from results only, --check detects drift, stale results excluded, text escaped."""
from __future__ import annotations

import json
import re

from vqbench.cli import main
from vqbench.leaderboard import check_leaderboard, md_escape, render, safe_url, write_leaderboard
from vqbench.results import result_path
from vqbench.runner import plan, run
from vqbench.submissions import get_submission
from vqbench.tasks import get_task

from conftest import TINY_TASK, add_task


def populate(project, subs=("minimal", "raises"), seeds=(0, 1)):
    results = project / "results"
    jobs, _ = plan([get_submission(s) for s in subs], [get_task("synthetic/tiny")], list(seeds), results, False)
    run(jobs, project, results, "serial", show_progress=False)
    return results


def test_leaderboard_numbers_come_from_results_and_check_detects_drift(project):
    results = populate(project)
    out = project / "leaderboard"
    write_leaderboard(results, out)
    page = (out / "README.md").read_text()
    assert check_leaderboard(results, out) == []
    r0 = json.loads(result_path(results, "minimal", "synthetic/tiny", 0).read_text())
    r1 = json.loads(result_path(results, "minimal", "synthetic/tiny", 1).read_text())
    mean = (r0["metrics"]["distortion_ratio"] + r1["metrics"]["distortion_ratio"]) / 2
    assert f"{mean:.3f} ±" in page
    assert "## Failed jobs" in page and "fixture exploded on purpose" in page
    assert "2 current result file(s) (2 failed, 0 stale" in page
    # a hand edit of a number, or a changed result, is caught
    (out / "README.md").write_text(page.replace(f"{mean:.3f}", "0.001"))
    assert check_leaderboard(results, out) and main(["leaderboard", "--check", "--results-dir", str(results),
                                                     "--out", str(out)]) == 1
    assert main(["leaderboard", "--results-dir", str(results), "--out", str(out)]) == 0
    assert main(["leaderboard", "--check", "--results-dir", str(results), "--out", str(out)]) == 0
    r0["metrics"]["distortion_ratio"] *= 2
    result_path(results, "minimal", "synthetic/tiny", 0).write_text(json.dumps(r0))
    problems = check_leaderboard(results, out)
    assert {f"{out / n}: differs" for n in ("README.md", "results.csv", "results.json")} <= set(problems)


def test_stale_results_are_excluded_and_counted(project):
    results = populate(project, subs=("minimal",))
    add_task(project, "tiny", TINY_TASK.replace("steps: 30", "steps: 31"))
    page = render(results)["README.md"].decode()
    assert "0 current result file(s) (0 failed, 2 stale excluded" in page
    assert "#### synthetic/tiny" not in page


def test_render_is_deterministic(project):
    results = populate(project, subs=("minimal",))
    assert render(results) == render(results)


def test_untrusted_text_cannot_inject_markdown_or_html():
    evil = "Evil | col <script>alert(1)</script> [x](javascript:alert(1)) **b**\n# heading"
    safe = md_escape(evil)
    assert "\n" not in safe and "<script>" not in safe and re.search(r"(?<!\\)\|", safe) is None
    assert "\\[x\\]\\(javascript:alert\\(1\\)\\)" in safe
    assert safe_url("javascript:alert(1)") is None and safe_url("https://arxiv.org/abs/2411.02038")
    assert safe_url("https://x.org/a) [y](https://evil") is None


def test_leaderboard_escapes_submission_metadata(project):
    meta = project / "submissions" / "minimal" / "submission.yaml"
    meta.write_text(meta.read_text().replace("display_name: Minimal VQ (docs example)",
                                             "display_name: 'Pwn | <img src=x onerror=alert(1)>'"))
    results = populate(project, subs=("minimal",), seeds=(0,))
    page = render(results)["README.md"].decode()
    assert "<img" not in page and "Pwn \\| &lt;img src=x onerror=alert\\(1\\)&gt;" in page
    header = next(line for line in page.splitlines() if line.startswith("| submission "))
    row = next(line for line in page.splitlines() if line.startswith("| Pwn"))
    unescaped_pipes = lambda line: len(re.findall(r"(?<!\\)\|", line))
    assert unescaped_pipes(row) == unescaped_pipes(header)  # the cell did not split the table


def test_not_applicable_pairs_are_labelled_not_counted_missing(project):
    """A submission that needs a trainable encoder is not run on an identity-encoder task; the page
    says so under that task and its overview count leaves the task out instead of 'incomplete'."""
    import shutil
    shutil.copytree(project / "submissions" / "minimal", project / "submissions" / "needs_encoder")
    yaml = project / "submissions" / "needs_encoder" / "submission.yaml"
    yaml.write_text(yaml.read_text().replace("name: minimal", "name: needs_encoder")
                    .replace("display_name: Minimal VQ (docs example)", "display_name: Needs Encoder")
                    + "needs: [trainable_encoder]\n")
    add_task(project, "ident", TINY_TASK.replace("model: {encoder: mlp, width: 16, depth: 1}",
                                                 "model: {encoder: identity}"))
    subs = [get_submission("minimal"), get_submission("needs_encoder")]
    jobs, _ = plan(subs, [get_task("synthetic/tiny"), get_task("synthetic/ident")], [0], project / "results", False)
    assert sorted((j.submission.name, j.task.id) for j in jobs) == [
        ("minimal", "synthetic/ident"), ("minimal", "synthetic/tiny"), ("needs_encoder", "synthetic/tiny")]
    run(jobs, project, project / "results", "serial", show_progress=False)
    page = render(project / "results", project)["README.md"].decode()
    assert "Not applicable, not run:" in page and "needs trainable_encoder" in page
    row = next(line for line in page.splitlines() if "| Needs Encoder" in line and "1/1 (1 n/a)" in line)
    assert "incomplete" not in row and "single seed" in row  # labelled, and not ranked: one seed


def test_results_no_trusted_run_produced_or_reproduced_are_labelled_self_reported(project):
    """A result counts as confirmed only while its exact bytes are in the ledger (vqbench.trust):
    one a submitter ran (or edited after confirmation) is marked, and counted, as self-reported."""
    from vqbench.trust import record

    def row(page):  # (submission, seeds, confirmed) cells of the task table's row
        table = page.split("#### synthetic/tiny", 1)[1]
        line = next(line for line in table.splitlines() if line.startswith("| Minimal"))
        return tuple(cell.strip() for cell in line.split("|")[1:4])

    results = populate(project, subs=("minimal",))
    paths = [result_path(results, "minimal", "synthetic/tiny", s) for s in (0, 1)]
    page = render(results)["README.md"].decode()
    assert row(page) == (r"Minimal VQ \(docs example\) †", "2", "0/2") and "0 of 2 result(s) were produced" in page
    record(results, paths[:1], "reproduced (test)")
    page = render(results)["README.md"].decode()
    assert row(page) == (r"Minimal VQ \(docs example\) †", "2", "1/2") and "(1 in all)" in page
    record(results, paths[1:], "reproduced (test)")
    page = render(results)["README.md"].decode()
    assert row(page) == (r"Minimal VQ \(docs example\)", "2", "2/2") and "2 of 2 result(s) were produced" in page
    edited = json.loads(paths[1].read_text())
    edited["metrics"]["utilization"] = 1.0
    paths[1].write_text(json.dumps(edited))
    assert row(render(results)["README.md"].decode())[2] == "1/2"


def test_a_trusted_run_records_what_it_produced_and_only_that(project):
    from vqbench.trust import is_confirmed, load_ledger
    results = project / "results"
    jobs, _ = plan([get_submission(s) for s in ("minimal", "raises")], [get_task("synthetic/tiny")], [0], results, False)
    run(jobs, project, results, "serial", show_progress=False, trusted=True)
    ledger = load_ledger(results)
    assert list(ledger) == ["minimal/synthetic/tiny/seed-0.json"]  # the failed job is not confirmed
    assert ledger["minimal/synthetic/tiny/seed-0.json"]["how"].startswith("produced by vqbench run --trusted")
    assert is_confirmed(results, result_path(results, "minimal", "synthetic/tiny", 0), ledger)


# --- statistics: intervals over seeds, "best" only where separated, family win rates -----------------

import math
from types import SimpleNamespace

import pytest

from vqbench.leaderboard.board import Board, Summary, best_of, family_ranking, win_rate
from vqbench.leaderboard.plots import coinciding, styles, sweep_fields
from vqbench.tasks import load_registry


@pytest.mark.parametrize("values, half", [
    ([1.0, 2.0, 3.0], 4.302653 / math.sqrt(3)),  # t(0.975, 2) x std 1 / sqrt(3)
    ([2.0, 2.0], 0.0),
    ([5.0], None),  # one seed: no interval
])
def test_mean_carries_a_student_t_95_interval_over_seeds(values, half):
    s = Summary.of(values)
    assert s.n == len(values) and s.mean == pytest.approx(sum(values) / len(values))
    assert s.half == (None if half is None else pytest.approx(half, rel=1e-6))


@pytest.mark.parametrize("name, sums, best", [
    ("utilization", {"a": Summary(0.9, 0.01, 3), "b": Summary(0.5, 0.01, 3)}, {"a"}),  # separated
    ("utilization", {"a": Summary(0.9, 0.3, 3), "b": Summary(0.5, 0.2, 3)}, set()),  # intervals overlap
    ("utilization", {"a": Summary(0.9, None, 1), "b": Summary(0.5, 0.01, 3)}, set()),  # leader has one seed
    ("utilization", {"a": Summary(0.9, 0.0, 3), "b": Summary(0.9, 0.0, 3)}, set()),  # a tie is no best
    ("distortion_ratio", {"a": Summary(1.1, 0.01, 3), "b": Summary(2.0, 0.01, 3)}, {"a"}),  # lower is better
])
def test_best_is_marked_only_beyond_the_uncertainty(name, sums, best):
    assert best_of(name, sums) == best


def test_win_rate_counts_ties_half_and_follows_the_direction():
    assert win_rate("distortion_ratio", {"a": 1.0, "b": 2.0, "c": 1.0}, "a") == pytest.approx(0.75)
    assert win_rate("utilization", {"a": 1.0, "b": 2.0}, "a") == 0.0
    assert win_rate("utilization", {"a": 1.0}, "a") is None


def test_family_ranking_is_a_mean_win_rate_and_labels_incomplete_and_single_seed_rows(project):
    add_task(project, "tiny2", TINY_TASK)
    sub = lambda n: SimpleNamespace(meta=SimpleNamespace(needs=[], display_name=n))
    board = Board(load_registry(project), {n: sub(n) for n in "abcd"})
    values = {"a": {"tiny": [1.0, 1.1], "tiny2": [1.0, 1.1]}, "b": {"tiny": [2.0, 2.1], "tiny2": [2.0, 2.1]},
              "c": {"tiny": [0.5], "tiny2": [0.5]}, "d": {"tiny": [1.5, 1.6]}}
    for s, per_task in values.items():
        for t, vs in per_task.items():
            board.ok[(f"synthetic/{t}", s)] = [{"task": f"synthetic/{t}", "submission": s, "seed": i,
                                                 "metrics": {"distortion_ratio": v, "utilization": 0.5}}
                                                for i, v in enumerate(vs)]
    rows = family_ranking(board, "synthetic")
    assert [(r.submission, r.rank, r.note) for r in rows] == [
        ("a", 1, ""), ("b", 2, ""), ("c", None, "single seed"), ("d", None, "incomplete: 1/2 tasks")]
    assert rows[0].win_rate == pytest.approx((2 / 3 + 1 / 2) / 2) and rows[0].seeds == (2, 2)
    assert rows[2].win_rate == 1.0  # the best mean, yet one seed: listed after the ranked rows
    assert rows[0].win_rate_ci == (rows[0].win_rate, rows[0].win_rate)  # no resample of seeds changes an order


def test_win_rate_interval_spans_what_resampling_seeds_can_change(project):
    sub = lambda n: SimpleNamespace(meta=SimpleNamespace(needs=[], display_name=n))
    board = Board(load_registry(project), {n: sub(n) for n in "xy"})
    for s, vs in {"x": [1.0, 3.0], "y": [2.0, 2.5]}.items():
        board.ok[("synthetic/tiny", s)] = [{"task": "synthetic/tiny", "submission": s, "seed": i,
                                            "metrics": {"distortion_ratio": v, "utilization": 0.5}}
                                           for i, v in enumerate(vs)]
    x = next(r for r in family_ranking(board, "synthetic") if r.submission == "x")
    assert x.win_rate == 1.0 and x.win_rate_ci == (0.0, 1.0)  # mean 2.0 beats 2.25, but seeds overlap
    assert family_ranking(board, "synthetic")[0].win_rate_ci == x.win_rate_ci  # deterministic


def test_plot_styles_follow_the_registry_not_the_plot():
    board = lambda names: SimpleNamespace(subs=dict.fromkeys(names))
    assert styles(board(["a", "b", "c"]))["c"] == styles(board(["c", "b", "a"]))["c"]
    assert len({(v["color"], v["marker"]) for v in styles(board([f"s{i}" for i in range(30)])).values()}) == 30


@pytest.mark.parametrize("points, fields", [
    ([(("quantizer.codebook_size", 256),), (("quantizer.codebook_size", 1024),)], ("quantizer.codebook_size",)),
    ([(("width", 4), ("depth", 1)), (("width", 64), ("depth", 3))], ("width", "depth")),  # a row per depth
    ([(("data.kind", "gaussian"),)], None),  # not numeric: no axis
    ([()], None),  # no sweep
])
def test_plots_take_numeric_sweeps_first_field_on_x(points, fields):
    assert sweep_fields([SimpleNamespace(sweep_point=p) for p in points]) == fields


def test_coinciding_curves_are_found():
    curves = {"a": [(1, 0.5), (2, 0.6)], "b": [(1, 0.5), (2, 0.6000001)], "c": [(1, 0.5), (2, 0.9)]}
    assert coinciding(curves, span=1.0) == [["a", "b"]]


# --- safe regeneration, site, exports ----------------------------------------------------------------


@pytest.mark.parametrize("state", ["missing", "empty", "ledger only"])
def test_an_unusable_results_dir_is_an_error_and_deletes_nothing(project, state, capsys):
    results, out = project / "results", project / "leaderboard"
    if state != "missing":
        results.mkdir()
    if state == "ledger only":
        (results / "confirmed.json").write_text("{}\n")
    for kept in ("README.md", "plots/old.svg", "site/index.html"):
        (out / kept).parent.mkdir(parents=True, exist_ok=True)
        (out / kept).write_text("kept")
    for args in (["leaderboard"], ["leaderboard", "--check"]):
        assert main([*args, "--results-dir", str(results), "--out", str(out)]) == 2
        assert "nothing was written" in capsys.readouterr().err
    assert all((out / kept).read_text() == "kept" for kept in ("README.md", "plots/old.svg", "site/index.html"))


def test_site_and_exports_come_from_results_and_check_covers_them(project):
    import csv
    from urllib.parse import unquote
    results = populate(project)
    out = project / "leaderboard"
    write_leaderboard(results, out)
    site = out / "site"
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    assert pages == ["index.html", "submissions/minimal.html", "submissions/raises.html", "tasks/synthetic_tiny.html"]
    assert "fixture exploded on purpose" in (site / "submissions" / "raises.html").read_text()  # failed jobs shown
    task_page = (site / "tasks" / "synthetic_tiny.html").read_text()
    linked = {unquote(h) for h in re.findall(r'href="([^"#]+/seed-[0-9]+\.json)"', task_page)}
    assert linked == {f"../../../results/minimal/synthetic/tiny/seed-{i}.json" for i in (0, 1)}
    assert all((site / "tasks" / h).resolve().is_file() for h in linked)  # relative links resolve on disk
    r0 = json.loads(result_path(results, "minimal", "synthetic/tiny", 0).read_text())
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 2 * len(r0["metrics"])  # one row per current ok result x metric; failed ones absent
    row = next(r for r in rows if r["seed"] == "0" and r["metric"] == "utilization")
    assert float(row["value"]) == r0["metrics"]["utilization"] and row["confirmed"] == "False"
    assert row["task_hash"] == r0["provenance"]["task_hash"] and len(row["sha256"]) == 64
    records = json.loads((out / "results.json").read_text())
    assert [(r["submission"], r["seed"]) for r in records] == [("minimal", 0), ("minimal", 1)]
    assert records[0]["metrics"] == r0["metrics"] and records[0]["path"] == "results/minimal/synthetic/tiny/seed-0.json"
    assert check_leaderboard(results, out) == []
    (site / "index.html").write_text((site / "index.html").read_text().replace("Minimal", "Maximal"))
    (site / "tasks" / "gone.html").write_text("left over")
    (out / "results.csv").write_text("edited")
    assert sorted(check_leaderboard(results, out)) == sorted([
        f"{out / 'results.csv'}: differs", f"{site / 'index.html'}: differs",
        f"{site / 'tasks' / 'gone.html'}: not produced by results/ (remove it)"])
    write_leaderboard(results, out)
    assert check_leaderboard(results, out) == [] and not (site / "tasks" / "gone.html").exists()


def test_site_escapes_untrusted_text_and_links_only_https(project):
    meta = project / "submissions" / "minimal" / "submission.yaml"
    text = meta.read_text().replace("display_name: Minimal VQ (docs example)",
                                    "display_name: '<script>alert(1)</script>'")
    meta.write_text(text + "paper: 'javascript:alert(1)'\ncode: 'https://example.org/code'\n"
                    if "paper:" not in text else text)
    results = populate(project, subs=("minimal",), seeds=(0,))
    files = render(results, project)
    html = b"".join(v for k, v in files.items() if k.endswith(".html")).decode()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "javascript:" not in html
    assert 'href="https://example.org/code"' in files["site/submissions/minimal.html"].decode()


def test_task_pages_overlay_code_usage_over_training_from_the_results(project):
    from vqbench.leaderboard import collect
    from vqbench.leaderboard.plots import usage_plots
    results = populate(project, subs=("minimal",))
    write_leaderboard(results, project / "leaderboard")
    r0 = json.loads(result_path(results, "minimal", "synthetic/tiny", 0).read_text())
    curve = r0["train"]["usage_curve"]
    assert curve and all(0 <= u <= 1 for _, u, _ in curve)  # recorded by the harness's training loop
    plot = project / "leaderboard" / "plots" / "usage-synthetic_tiny.svg"
    assert plot.is_file() and "usage-synthetic_tiny.svg" in (
        project / "leaderboard" / "site" / "tasks" / "synthetic_tiny.html").read_text()
    for seed in (0, 1):  # results from before the curve existed: no plot, nothing invented
        path = result_path(results, "minimal", "synthetic/tiny", seed)
        r = json.loads(path.read_text())
        r["train"].pop("usage_curve")
        path.write_text(json.dumps(r))
    board = collect(results)
    assert len(board.ok[("synthetic/tiny", "minimal")]) == 2 and usage_plots(board) == {}
    write_leaderboard(results, project / "leaderboard")  # the page says why there is no curve
    page = (project / "leaderboard" / "site" / "tasks" / "synthetic_tiny.html").read_text()
    assert "usage-synthetic_tiny.svg" not in page and "2 result(s) of this task carry no usage curve" in page
