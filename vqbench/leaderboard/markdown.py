"""leaderboard/README.md: the family rankings, then per task file its plot and a table per task."""
from __future__ import annotations

import re

from tabulate import tabulate

from vqbench.families import get_family
from vqbench.leaderboard.board import CI_NAME, WIN_RATE_CI_NAME, Board, Standing, best_of, family_ranking, level_table, \
    summary, task_order
from vqbench.metrics import CODE_METRICS, METRICS
from vqbench.tasks import not_applicable
from vqbench.trust import LEDGER

SELF_REPORTED = "†"
# emitted codes beside the usage columns: those are over the task's K, it says how much of K is reachable
TABLE_METRICS = ("utilization", "emitted_codes", "perplexity_ratio", "dead_codes", "codebook_rank", "latent_rank",
                 "quantization_error")


def md_escape(text: object, limit: int = 300) -> str:
    """Make untrusted text (names, descriptions, error messages) inert inside a markdown table cell."""
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", str(text)).strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # no raw HTML
    return re.sub(r"([\\`*_{}\[\]()#+!|~])", r"\\\1", text)


def safe_url(url: str) -> str | None:
    return url if re.fullmatch(r"https://[A-Za-z0-9.\-]+(/[A-Za-z0-9._~%/?&=+#:\-]*)?", url or "") else None


def column(name: str) -> str:
    arrow = "↑" if METRICS[name].higher_is_better else "↓"
    return f"{METRICS[name].label} {arrow}"


def table_metrics(task) -> list[str]:
    return [*TABLE_METRICS, *task.metrics]


def rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def win_cell(st: Standing) -> str:
    """The mean win rate and its bootstrap interval over seeds (none for a row with single-seed tasks:
    resampling one seed shows only the others' spread)."""
    ci = st.win_rate_ci
    shown = ci and st.win_rate is not None and st.seeds[0] > 1
    return rate(st.win_rate) + (f" [{ci[0]:.0%}, {ci[1]:.0%}]" if shown else "")


def seeds_cell(lo_hi: tuple[int, int]) -> str:
    return str(lo_hi[0]) if lo_hi[0] == lo_hi[1] else f"{lo_hi[0]}-{lo_hi[1]}"


def name_cell(board: Board, s: str, rows: list[dict]) -> str:
    return md_escape(board.subs[s].meta.display_name) + (f" {SELF_REPORTED}" if board.self_reported(rows) else "")


def overview(board: Board) -> list[str]:
    out = []
    for f in board.families:
        fam = get_family(f)
        out += [f"### {fam.label}: {len(board.family_tasks(f))} task(s), headline {column(fam.primary_metric)}", ""]
        rows = []
        for st in family_ranking(board, f):
            rs = [r for t in board.family_tasks(f) for r in board.ok.get((t, st.submission), [])]
            rows.append([st.rank or "—", name_cell(board, st.submission, rs), win_cell(st),
                         rate(st.utilization_win_rate),
                         f"{st.tasks}/{st.applicable}" + (f" ({st.not_applicable} n/a)" if st.not_applicable else ""),
                         seeds_cell(st.seeds), f"{st.confirmed}/{st.results}", st.note or "ranked"])
        out += [tabulate(rows, headers=["rank", "submission", f"win rate: {column(fam.primary_metric)}",
                                        "win rate: utilization ↑", "tasks", "seeds", "confirmed", "status"],
                         tablefmt="github", disable_numparse=True), ""]
    return out


def task_table(board: Board, task) -> str:
    names = table_metrics(task)
    order = task_order(board, task.id)
    sums = {n: {s: summary(board.ok[(task.id, s)], n) for s in order} for n in names}
    best = {n: best_of(n, sums[n]) for n in names}
    rows = []
    for s in order:
        rs = board.ok[(task.id, s)]
        cells = [name_cell(board, s, rs), len(rs) if len(rs) > 1 else "1 (single seed)",
                 f"{len(rs) - board.self_reported(rs)}/{len(rs)}", format(rs[0]["bits_per_token"], ".2f")]
        for n in names:
            cell = sums[n][s].fmt(METRICS[n].fmt) if sums[n][s] else "n/a"
            cells.append(f"**{cell}**" if s in best[n] else cell)
        rows.append(cells)
    return tabulate(rows, headers=["submission", "seeds", "confirmed", "bits/token", *map(column, names)],
                    tablefmt="github", disable_numparse=True)


def family_sections(board: Board, plots: dict) -> list[str]:
    """One section per family, a subsection per task file (its plot, then a table per task)."""
    out, by_family = [], {}
    for t in board.tasks.values():
        by_family.setdefault(t.family, {}).setdefault(t.base_id, []).append(t)
    for family in sorted(by_family):
        sections = []
        for base_id in sorted(by_family[family]):
            file_tasks = sorted(by_family[family][base_id], key=lambda t: [v for _, v in t.sweep_point])
            if not any((t.id, s) in board.ok for t in file_tasks for s in board.subs):
                continue
            sections += [f"### {base_id}", "", f"_{md_escape(file_tasks[0].description)}_ "
                         f"(v{file_tasks[0].version}, {file_tasks[0].tier})", ""]
            if base_id in plots:
                name, _, captions = plots[base_id]
                sections += [f"![{base_id}](plots/{name})", "", " ".join(map(md_escape, captions)), ""]
            for t in file_tasks:
                if any((t.id, s) in board.ok for s in board.subs):
                    sections += [f"#### {t.id}", "", task_table(board, t), ""]
                    if levels := level_table(board, t, task_order(board, t.id)):
                        heads, rows = levels
                        sections += ["Code usage per level (mean over seeds; the table above counts every level's "
                                     "codebook entries together):", "", tabulate(
                                         [[name_cell(board, s, board.ok[(t.id, s)]), n,
                                           *("n/a" if v is None else format(v, METRICS[m].fmt) for m, v in cells)]
                                          for s, n, cells in rows],
                                         headers=["submission", "seeds", *heads], tablefmt="github",
                                         disable_numparse=True), ""]
                    if skipped := [f"{md_escape(board.subs[s].meta.display_name)} ({why})" for s in sorted(board.subs)
                                   if (why := not_applicable(board.subs[s], t))]:
                        sections += [f"Not applicable, not run: {'; '.join(skipped)}.", ""]
        if sections:
            out += [f"## {family}", "", *sections]
    return out


def closing_sections(board: Board) -> list[str]:
    """Failed jobs, the submissions table, provenance and the metric definitions."""
    out = []
    if board.failed:
        out += ["## Failed jobs", "", tabulate(
            [(md_escape(r["submission"]), md_escape(r["task"]), md_escape(r["seed"]), md_escape(r["error"]["reason"], 200))
             for r in sorted(board.failed, key=lambda r: (r["submission"], r["task"], r["seed"]))],
            headers=["submission", "task", "seed", "reason"], tablefmt="github", disable_numparse=True), ""]
    shown = sorted({s for (_, s) in board.ok} | {r["submission"] for r in board.failed})
    out += ["## Submissions", "", tabulate(
        [(md_escape(s.meta.display_name), f"`{s.name}`", s.hash,
          f"[paper]({u})" if (u := safe_url(s.meta.paper)) else "", md_escape(s.meta.description, 160))
         for s in (board.subs[n] for n in shown)],
        headers=["submission", "name", "code hash", "paper", "description"], tablefmt="github",
        disable_numparse=True), ""]
    commits = sorted({r["provenance"].get("git_commit") or "unknown" for rs in board.ok.values() for r in rs})
    out += ["## Provenance", "", f"Results produced at vqbench commit(s): {', '.join(c[:12] for c in commits)}. "
            "Each result file under `results/<submission>/<task>/seed-<n>.json` records the vqbench version, "
            "git commit, task and submission hashes, package versions, device and wall time.", "",
            "## Metrics", "", tabulate(
                [(f"`{n}`", "↑" if METRICS[n].higher_is_better else "↓", METRICS[n].doc)
                 for n in sorted({*CODE_METRICS, *(m for t in board.tasks.values() for m in t.metrics)})],
                headers=["metric", "better", "definition"], tablefmt="github"), ""]
    return out


def page(board: Board, plots: dict) -> str:
    n_ok = sum(len(v) for v in board.ok.values())
    n_self = board.self_reported([r for rs in board.ok.values() for r in rs])
    out = ["# vqbench leaderboard", "",
           f"Generated by `vqbench leaderboard` from {n_ok} current result file(s) ({len(board.failed)} failed, "
           f"{len(board.stale)} stale excluded, {len(board.unreadable)} unreadable). Do not edit: "
           "`vqbench leaderboard --check` fails when this page is not what `results/` gives.", "",
           "Browse the same numbers as a static site, sortable, with a page per task and per submission and "
           "every number linked to its result file: [site/index.html](site/index.html) (open it from disk, it needs "
           "no network). Every current result as data: [results.csv](results.csv), [results.json](results.json).", "",
           f"Values are mean ± the half-width of the {CI_NAME} (t quantile with n-1 degrees of freedom times "
           "std/sqrt(n)); a value without ± has one seed. Bold marks the best only where its interval and the "
           "runner-up's do not overlap (both with two or more seeds). ↑ higher is better, ↓ lower is better. "
           "Reconstruction is always from `decode(codes)`.", "",
           "Ranking: per family, the mean over its tasks of the win rate (the fraction of the other submissions "
           "on that task whose seed-mean is worse; ties count half), so no task's scale dominates; in brackets its "
           f"{WIN_RATE_CI_NAME}. Only rows with "
           "every applicable task and two or more seeds on each are ranked; the others are listed after them with "
           "the reason.", "",
           f"Trust: {n_ok - n_self} of {n_ok} result(s) were produced or reproduced by a run the project controls "
           f"(their exact bytes are in `results/{LEDGER}`; `confirmed` counts them per row). {SELF_REPORTED} marks "
           f"a row with self-reported results ({n_self} in all): numbers that came with a submission and that no "
           "trusted run has produced or reproduced yet.", ""]
    if board.ok:
        out += ["## Overview", "", *overview(board)]
    out += family_sections(board, plots)
    out += closing_sections(board)
    return "\n".join(out)
