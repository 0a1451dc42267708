"""Regenerate leaderboard/ from results/, deterministically: README.md (markdown), plots/*.svg,
site/ (static HTML), results.csv and results.json. `vqbench leaderboard --check` compares every file.

board.py collects current results and their statistics; markdown.py, plots.py, site.py and
export.py each write one kind of output from it.
"""
from __future__ import annotations

from pathlib import Path

from vqbench.leaderboard.board import Board, collect
from vqbench.leaderboard.export import to_csv, to_json
from vqbench.leaderboard.markdown import md_escape, page, safe_url
from vqbench.leaderboard.plots import sweep_plots, usage_plots
from vqbench.leaderboard.site import SITE, render_site, results_relative

__all__ = ["Board", "check_leaderboard", "collect", "md_escape", "render", "safe_url", "write_leaderboard"]

README = "README.md"
PLOTS = "plots"
GENERATED = (PLOTS, SITE)  # folders whose every file is generated: others there are removed / reported


def render(results_dir: Path, root: Path | None = None, out: Path | None = None) -> dict[str, bytes]:
    """Every file of leaderboard/ (`out`, default: beside results/), as {relative path: content}."""
    board = collect(results_dir, root)
    plots, usage = sweep_plots(board), usage_plots(board)
    files = {f"{PLOTS}/{name}": svg for name, svg, _ in [*plots.values(), *usage.values()]}
    files[README] = page(board, plots).encode()
    files["results.csv"] = to_csv(board)
    files["results.json"] = to_json(board)
    out = Path(out) if out is not None else Path(results_dir).parent / "leaderboard"
    files.update(render_site(board, plots, usage, results_relative(results_dir, out)))
    return files


def extra_files(out: Path, files: dict[str, bytes]) -> list[Path]:
    """Files under the generated folders that results/ no longer produces."""
    return sorted(p for d in GENERATED if (out / d).is_dir() for p in (out / d).rglob("*")
                  if p.is_file() and p.relative_to(out).as_posix() not in files)


def write_leaderboard(results_dir: Path, out: Path, root: Path | None = None) -> str:
    files = render(results_dir, root, out)  # raises before anything is touched when results/ is unusable
    out.mkdir(parents=True, exist_ok=True)
    for old in extra_files(out, files):
        old.unlink()
    for name, content in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_bytes() != content:
            path.write_bytes(content)
    return f"{len(files)} file(s)"


def check_leaderboard(results_dir: Path, out: Path, root: Path | None = None) -> list[str]:
    """What differs between leaderboard/ on disk and what results/ gives; empty when up to date."""
    files = render(results_dir, root, out)
    problems = [f"{out / n}: {'missing' if not (out / n).exists() else 'differs'}"
                for n, c in files.items() if not (out / n).exists() or (out / n).read_bytes() != c]
    return problems + [f"{p}: not produced by results/ (remove it)" for p in extra_files(out, files)]
