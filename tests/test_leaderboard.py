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
    assert check_leaderboard(results, out) == [f"{out / 'README.md'}: differs"]


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
    row = next(line for line in page.splitlines() if line.startswith("| Needs Encoder") and "1/1 (1 n/a)" in line)
    assert "incomplete" not in row


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
