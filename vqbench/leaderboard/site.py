"""leaderboard/site/: a static HTML site (Jinja2, autoescaped: names and descriptions are untrusted),
an overview, a page per task and per submission. No network: inline CSS and sorting script, plots
from ../plots/, every number linked to its result JSON by a relative link. Deterministic bytes."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from urllib.parse import quote

from markupsafe import Markup

from vqbench.families import get_family
from vqbench.leaderboard.board import CI_NAME, WIN_RATE_CI_NAME, Board, best_of, family_ranking, level_table, summary, task_order
from vqbench.leaderboard.markdown import SELF_REPORTED, column, safe_url, table_metrics, win_cell
from vqbench.metrics import METRICS

SITE = "site"
TEMPLATES = Path(__file__).parent / "templates"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def sparkline(points: list, width: int = 160, height: int = 36, what: str = "training loss",
              fraction: bool = False) -> Markup:
    """An inline SVG polyline of [step, value] pairs: log scale when the values span decades, or a
    fixed 0-1 axis for a `fraction` (so a collapse looks like one whatever the run)."""
    pts = [(float(x), float(y)) for x, y in points or [] if y is not None and math.isfinite(y)]
    if len(pts) < 2:
        return Markup("")
    log = not fraction and min(y for _, y in pts) > 0 and max(y for _, y in pts) / min(y for _, y in pts) >= 10
    ys = [math.log10(y) if log else y for _, y in pts]
    x0, x1 = pts[0][0], pts[-1][0]
    y0, y1 = (0.0, 1.0) if fraction else (min(ys), max(ys))
    sx = lambda x: 2 + (width - 4) * (x - x0) / ((x1 - x0) or 1)
    sy = lambda y: height - 2 - (height - 4) * (y - y0) / ((y1 - y0) or 1)
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for (x, _), y in zip(pts, ys))
    title = f"{what}, steps {pts[0][0]:g}-{pts[-1][0]:g}: {pts[0][1]:.4g} to {pts[-1][1]:.4g}" + \
        (" (log scale)" if log else "")
    return Markup(f'<svg class="spark" width="{width}" height="{height}" role="img"><title>{title}</title>'
                  f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.2" points="{line}"/></svg>')


def usage_sparkline(train: dict) -> Markup:
    """Utilization of the codes emitted in each window of training (the harness's usage curve;
    results from before it was recorded have none)."""
    return sparkline([row[:2] for row in train.get("usage_curve") or []], what="codes used while training "
                     "(utilization per window)", fraction=True)


class Links:
    """Relative links from a page at `depth` folders below site/."""

    def __init__(self, results_rel: str, depth: int):
        self.up = "../" * depth
        self.results_rel = results_rel

    def result(self, board: Board, tid: str, s: str, seed: int) -> str:
        return self.up + self.results_rel + "/" + quote(board.files[(tid, s, seed)][0])

    def task(self, tid: str) -> str:
        return f"{self.up}tasks/{slug(tid)}.html"

    def sub(self, s: str) -> str:
        return f"{self.up}submissions/{slug(s)}.html"

    def plot(self, name: str) -> str:
        return f"{self.up}../plots/{quote(name)}"


def environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["pct"] = lambda x: "n/a" if x is None else f"{x:.0%}"
    env.globals.update(column=column, win_cell=win_cell, METRICS=METRICS, SELF_REPORTED=SELF_REPORTED,
                       CI_NAME=CI_NAME, WIN_RATE_CI_NAME=WIN_RATE_CI_NAME)
    return env


def value_cell(name: str, value) -> dict:
    return {"text": "n/a" if value is None else format(value, METRICS[name].fmt), "v": "" if value is None else repr(value)}


def task_context(board: Board, task, links: Links, plots: dict, usage: dict) -> dict:
    names = table_metrics(task)
    order = task_order(board, task.id)
    sums = {n: {s: summary(board.ok[(task.id, s)], n) for s in order} for n in names}
    best = {n: best_of(n, sums[n]) for n in names}
    rows, seeds = [], []
    for s in order:
        rs = sorted(board.ok[(task.id, s)], key=lambda r: r["seed"])
        rows.append({"sub": s, "name": board.subs[s].meta.display_name, "href": links.sub(s), "n": len(rs),
                     "self": board.self_reported(rs), "bits": rs[0]["bits_per_token"],
                     "cells": [{**value_cell(n, m.mean if (m := sums[n][s]) else None),
                                "text": m.fmt(METRICS[n].fmt) if m else "n/a", "best": s in best[n],
                                "href": f"#seeds-{slug(s)}"} for n in names]})
        for r in rs:
            seeds.append({"sub": s, "name": board.subs[s].meta.display_name, "seed": r["seed"],
                          "anchor": f"seeds-{slug(s)}" if r is rs[0] else None,
                          "href": links.result(board, task.id, s, r["seed"]), "confirmed": board.is_confirmed(r),
                          "wall": r["provenance"].get("wall_time_s"), "spark": sparkline(r["train"].get("loss_curve")),
                          "usage": usage_sparkline(r["train"]),
                          "cells": [value_cell(n, r["metrics"].get(n)) for n in names]})
    plot, used = plots.get(task.base_id), usage.get(task.id)
    return {"task": task, "names": names, "rows": rows, "seeds": seeds,
            "plot": {"src": links.plot(plot[0]), "captions": plot[2]} if plot else None,
            "usage": {"src": links.plot(used[0]), "captions": used[2]} if used else None,
            "usage_missing": sum(not r["train"].get("usage_curve") for s in order for r in board.ok[(task.id, s)]),
            "levels": level_context(board, task, order), "spec": task.spec(), "family_label": get_family(task.family).label}


def level_context(board: Board, task, order: list[str]) -> dict | None:
    table = level_table(board, task, order)
    if table is None:
        return None
    heads, rows = table
    return {"heads": heads, "rows": [{"name": board.subs[s].meta.display_name, "n": n,
                                      "cells": [value_cell(name, v) for name, v in cells]} for s, n, cells in rows]}


def sub_context(board: Board, s: str, links: Links) -> dict:
    sub = board.subs[s]
    results = []
    for (tid, name), rs in sorted(board.ok.items()):
        if name != s:
            continue
        primary = get_family(board.tasks[tid].family).primary_metric
        for r in sorted(rs, key=lambda r: r["seed"]):
            results.append({"task": tid, "task_href": links.task(tid), "seed": r["seed"],
                            "href": links.result(board, tid, s, r["seed"]), "bits": r["bits_per_token"],
                            "primary": primary, "p": value_cell(primary, r["metrics"].get(primary)),
                            "u": value_cell("utilization", r["metrics"].get("utilization")),
                            "confirmed": board.is_confirmed(r), "wall": r["provenance"].get("wall_time_s"),
                            "spark": sparkline(r["train"].get("loss_curve"))})
    failed = [r for r in board.failed if r["submission"] == s]
    return {"sub": sub, "paper": safe_url(sub.meta.paper), "code": safe_url(sub.meta.code), "results": results,
            "failed": sorted(failed, key=lambda r: (r["task"], r["seed"])), "params": sorted(sub.meta.params.items())}


def index_context(board: Board, links: Links, plots: dict) -> dict:
    families, family_of = [], {t.base_id: t.family for t in board.tasks.values()}
    for f in board.families:
        fam = get_family(f)
        rows = []
        for st in family_ranking(board, f):
            rows.append({"st": st, "name": board.subs[st.submission].meta.display_name, "href": links.sub(st.submission),
                         "self": st.confirmed < st.results})
        families.append({"label": fam.label, "primary": fam.primary_metric, "rows": rows,
                         "tasks": [{"id": t, "href": links.task(t)} for t in board.family_tasks(f)],
                         "plots": [{"src": links.plot(p[0]), "captions": p[2], "base_id": b}
                                   for b, p in plots.items() if family_of[b] == f]})
    n_ok = sum(len(v) for v in board.ok.values())
    return {"families": families, "n_ok": n_ok, "n_self": board.self_reported([r for v in board.ok.values() for r in v]),
            "n_failed": len(board.failed), "n_stale": len(board.stale), "n_unreadable": len(board.unreadable),
            "subs": [{"name": board.subs[s].meta.display_name, "href": links.sub(s), "id": s} for s in shown(board)]}


def shown(board: Board) -> list[str]:
    """Submissions with a page: a current result, ok or failed."""
    return sorted({s for (_, s) in board.ok} | {r["submission"] for r in board.failed})


def render_site(board: Board, plots: dict, usage: dict, results_rel: str) -> dict[str, bytes]:
    """{path under leaderboard/: bytes}. `results_rel`: results/ relative to site/."""
    env = environment()
    files = {}
    top, deep = Links(results_rel, 0), Links(results_rel, 1)
    files[f"{SITE}/index.html"] = env.get_template("index.html").render(up="", **index_context(board, top, plots))
    for tid in sorted({t for (t, _) in board.ok}):
        ctx = task_context(board, board.tasks[tid], deep, plots, usage)
        files[f"{SITE}/tasks/{slug(tid)}.html"] = env.get_template("task.html").render(up="../", **ctx)
    for s in shown(board):
        files[f"{SITE}/submissions/{slug(s)}.html"] = env.get_template("submission.html").render(
            up="../", **sub_context(board, s, deep))
    if len(files) != 1 + len({t for (t, _) in board.ok}) + len(shown(board)):
        raise ValueError("two task ids or submission names share a page name")  # slug() collision
    return {k: v.encode() for k, v in files.items()}


def results_relative(results_dir: Path, out: Path) -> str:
    return Path(os.path.relpath(Path(results_dir).resolve(), (Path(out) / SITE).resolve())).as_posix()
