"""Regenerate leaderboard/ (markdown via tabulate, SVG plots) from results/, deterministically.

Only current results count: a result whose submission hash or task hash differs from the code
and YAML on disk is stale, excluded and counted. Every number printed comes from a result file.
"""
from __future__ import annotations

import io
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

from tabulate import tabulate

from vqbench.families import get_family
from vqbench.metrics import CODE_METRICS, METRICS
from vqbench.results import iter_results
from vqbench.schema import ConfigError
from vqbench.submissions import get_submission, list_submissions
from vqbench.tasks import load_registry, not_applicable
from vqbench.trust import LEDGER, is_confirmed, load_ledger

README = "README.md"
PLOTS = "plots"
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


def fmt(name: str, values: list[float]) -> str:
    spec = METRICS[name].fmt
    mean = statistics.fmean(values)
    if len(values) < 2:
        return format(mean, spec)
    return f"{format(mean, spec)} ± {format(statistics.stdev(values), spec)}"


SELF_REPORTED = "†"


def collect(results_dir: Path, root: Path | None):
    """Sort result files into current ok / current failed / stale, keyed by (task, submission); and
    the (task, submission, seed) of ok results that a trusted run produced or reproduced (ledger)."""
    tasks = load_registry(root)
    hashes, subs = {}, {}
    for name in list_submissions(root=root):
        try:
            subs[name] = get_submission(name, root)
            hashes[name] = subs[name].hash
        except ConfigError:
            pass
    ok, failed, stale, unreadable = defaultdict(list), [], [], []
    ledger, confirmed = load_ledger(results_dir), set()
    for path, result in iter_results(results_dir):
        if result is None:
            unreadable.append(path)
            continue
        task, prov = tasks.get(result.get("task")), result.get("provenance", {})
        if result.get("submission") not in hashes:
            stale.append((path, "submission not registered"))
        elif prov.get("submission_hash") != hashes[result["submission"]]:
            stale.append((path, "submission code changed"))
        elif task is None:
            stale.append((path, "task no longer in the registry"))
        elif prov.get("task_hash") != task.hash:
            stale.append((path, "task spec changed"))
        elif result.get("status") == "ok":
            ok[(task.id, result["submission"])].append(result)
            if is_confirmed(results_dir, path, ledger):
                confirmed.add((task.id, result["submission"], result.get("seed")))
        else:
            failed.append(result)
    return tasks, subs, ok, failed, stale, unreadable, confirmed


def self_reported(rows: list[dict], confirmed: set) -> int:
    """How many of these results no trusted run produced or reproduced."""
    return sum((r["task"], r["submission"], r.get("seed")) not in confirmed for r in rows)


def best_of(name: str, means: dict[str, float]) -> set[str]:
    finite = {k: v for k, v in means.items() if v is not None and math.isfinite(v)}
    if len(finite) < 2:
        return set()
    target = (max if METRICS[name].higher_is_better else min)(finite.values())
    return {k for k, v in finite.items() if v == target}


def task_table(task, rows_by_sub: dict[str, list[dict]], subs, confirmed: set) -> str:
    family = get_family(task.family)
    names = [*TABLE_METRICS, *task.metrics]
    means = {n: {s: statistics.fmean(v) if (v := [r["metrics"][n] for r in rs if r["metrics"].get(n) is not None])
                 else None for s, rs in rows_by_sub.items()} for n in names}
    best = {n: best_of(n, means[n]) for n in names}
    primary = family.primary_metric
    sign = 1 if METRICS[primary].higher_is_better else -1

    def order(s):
        m = means[primary][s]
        return (m is None, -sign * m if m is not None else 0, s)

    rows = []
    for s in sorted(rows_by_sub, key=order):
        rs = rows_by_sub[s]
        unconfirmed = self_reported(rs, confirmed)
        cells = [md_escape(subs[s].meta.display_name) + (f" {SELF_REPORTED}" if unconfirmed else ""), len(rs),
                 f"{len(rs) - unconfirmed}/{len(rs)}", format(rs[0]["bits_per_token"], ".2f")]
        for n in names:
            vals = [r["metrics"][n] for r in rs if r["metrics"].get(n) is not None]
            cell = fmt(n, vals) if vals else "n/a"
            cells.append(f"**{cell}**" if s in best[n] else cell)
        rows.append(cells)
    return tabulate(rows, headers=["submission", "seeds", "confirmed", "bits/token", *map(column, names)],
                    tablefmt="github", disable_numparse=True)


def overview(tasks, subs, ok, confirmed: set) -> str:
    families = sorted({t.family for (tid, _) in ok for t in [tasks[tid]]})
    per_family_tasks = {f: sorted({tid for (tid, _) in ok if tasks[tid].family == f}) for f in families}
    headers, rows, cols = ["submission"], {}, []
    for f in families:
        primary = get_family(f).primary_metric
        cols += [(f, "utilization"), (f, primary)]
        label = get_family(f).label
        headers += [f"{label}: mean {column('utilization')}", f"{label}: mean {column(primary)}", f"{label}: tasks"]
    means = defaultdict(dict)
    for s in sorted({s for (_, s) in ok}):
        for f in families:
            applicable = [tid for tid in per_family_tasks[f] if not_applicable(subs[s], tasks[tid]) is None]
            have = [tid for tid in applicable if (tid, s) in ok]
            for _, name in [c for c in cols if c[0] == f]:
                vals = [statistics.fmean(r["metrics"][name] for r in ok[(tid, s)]) for tid in have
                        if all(r["metrics"].get(name) is not None for r in ok[(tid, s)])]
                # Only a submission with every task of the family is ranked on the family mean.
                complete = len(vals) == len(applicable)
                means[(f, name)][s] = statistics.fmean(vals) if vals and complete else None
            na = len(per_family_tasks[f]) - len(applicable)
            rows.setdefault(s, []).append(f"{len(have)}/{len(applicable)}" + (f" ({na} n/a)" if na else ""))
    # Best first on the first family's primary metric; incomplete submissions last, by name.
    key = cols[1] if cols else None
    sign = 1 if key and METRICS[key[1]].higher_is_better else -1

    def order(s):
        m = means[key].get(s) if key else None
        return (m is None, -sign * m if m is not None else 0, s)

    table = []
    for s in sorted(rows, key=order):
        unconfirmed = self_reported([r for (_, sub), rs in ok.items() if sub == s for r in rs], confirmed)
        cells = [md_escape(subs[s].meta.display_name) + (f" {SELF_REPORTED}" if unconfirmed else "")]
        for f in families:
            for _, name in [c for c in cols if c[0] == f]:
                m = means[(f, name)][s]
                cell = format(m, METRICS[name].fmt) if m is not None else "incomplete"
                cells.append(f"**{cell}**" if s in best_of(name, means[(f, name)]) else cell)
            cells.append(rows[s][families.index(f)])
        table.append(cells)
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def sweep_plot(base_id: str, tasks_of_file: list, ok, subs) -> bytes | None:
    """Utilization and the primary metric against a single numeric swept field, one line per submission."""
    keys = {tuple(k for k, _ in t.sweep_point) for t in tasks_of_file}
    if len(keys) != 1 or len(next(iter(keys))) != 1:
        return None
    values = [t.sweep_point[0][1] for t in tasks_of_file]
    if not all(isinstance(v, (int, float)) for v in values):
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    matplotlib.rcParams["svg.hashsalt"] = "vqbench"  # stable ids: the SVG is a pure function of results
    primary = get_family(tasks_of_file[0].family).primary_metric
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    names = sorted({s for (tid, s) in ok if any(t.id == tid for t in tasks_of_file)})
    colors = plt.get_cmap("tab20").colors  # 20 distinct colours; markers vary too, for print
    for i, s in enumerate(names):
        style = {"color": colors[i % 20], "marker": "osD^v<>p"[i % 8]}
        for ax, name in zip(axes, ("utilization", primary)):
            xs, ys = [], []
            for t in sorted(tasks_of_file, key=lambda t: t.sweep_point[0][1]):
                rs = ok.get((t.id, s))
                if rs and all(r["metrics"].get(name) is not None for r in rs):
                    xs.append(t.sweep_point[0][1])
                    ys.append(statistics.fmean(r["metrics"][name] for r in rs))
            ax.plot(xs, ys, label=subs[s].meta.display_name[:40], **style)
    field = next(iter(keys))[0].split(".")[-1]
    log_x = min(values) > 0 and max(values) / min(values) >= 8
    for ax, name in zip(axes, ("utilization", primary)):
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(field)
        ax.set_ylabel(column(name))
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 1.02)  # utilization is a fraction: keep the full scale visible
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle(base_id)
    fig.tight_layout(rect=(0, 0, 0.78, 1))
    fig.legend(handles, labels, fontsize=7, loc="center right")
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return buf.getvalue()


def family_sections(tasks, subs, ok, confirmed: set, files: dict[str, bytes]) -> list[str]:
    """One section per family, a subsection per task file (its sweep plot, then a table per task);
    plots are added to `files`."""
    out = []
    by_family = defaultdict(lambda: defaultdict(list))
    for t in tasks.values():
        by_family[t.family][t.base_id].append(t)
    for family in sorted(by_family):
        sections = []
        for base_id in sorted(by_family[family]):
            file_tasks = sorted(by_family[family][base_id], key=lambda t: [v for _, v in t.sweep_point])
            if not any((t.id, s) in ok for t in file_tasks for s in subs):
                continue
            sections += [f"### {base_id}", "", f"_{md_escape(file_tasks[0].description)}_ "
                         f"(v{file_tasks[0].version}, {file_tasks[0].tier})", ""]
            plot = sweep_plot(base_id, file_tasks, ok, subs)
            if plot is not None:
                name = f"{PLOTS}/{base_id.replace('/', '-')}.svg"
                files[name] = plot
                sections += [f"![{base_id}]({name})", ""]
            for t in file_tasks:
                rows = {s: ok[(t.id, s)] for s in subs if (t.id, s) in ok}
                if rows:
                    sections += [f"#### {t.id}", "", task_table(t, rows, subs, confirmed), ""]
                    if skipped := [f"{md_escape(subs[s].meta.display_name)} ({why})" for s in sorted(subs)
                                   if (why := not_applicable(subs[s], t))]:
                        sections += [f"Not applicable, not run: {'; '.join(skipped)}.", ""]
        if sections:
            out += [f"## {family}", "", *sections]
    return out


def closing_sections(tasks, subs, ok, failed) -> list[str]:
    """Failed jobs, the submissions table, provenance and the metric definitions."""
    out = []
    if failed:
        out += ["## Failed jobs", "", tabulate(
            [(md_escape(r["submission"]), md_escape(r["task"]), md_escape(r["seed"]), md_escape(r["error"]["reason"], 200))
             for r in sorted(failed, key=lambda r: (r["submission"], r["task"], r["seed"]))],
            headers=["submission", "task", "seed", "reason"], tablefmt="github", disable_numparse=True), ""]
    out += ["## Submissions", "", tabulate(
        [(md_escape(s.meta.display_name), f"`{s.name}`", s.hash,
          f"[paper]({u})" if (u := safe_url(s.meta.paper)) else "", md_escape(s.meta.description, 160))
         for s in (subs[n] for n in sorted({s for (_, s) in ok} | {r["submission"] for r in failed}))],
        headers=["submission", "name", "code hash", "paper", "description"], tablefmt="github",
        disable_numparse=True), ""]
    commits = sorted({r["provenance"].get("git_commit") or "unknown" for rs in ok.values() for r in rs})
    out += ["## Provenance", "", f"Results produced at vqbench commit(s): {', '.join(c[:12] for c in commits)}. "
            "Each result file under `results/<submission>/<task>/seed-<n>.json` records the vqbench version, "
            "git commit, task and submission hashes, package versions, device and wall time.", "",
            "## Metrics", "", tabulate(
                [(f"`{n}`", "↑" if METRICS[n].higher_is_better else "↓", METRICS[n].doc)
                 for n in sorted({*CODE_METRICS, *(m for t in tasks.values() for m in t.metrics)})],
                headers=["metric", "better", "definition"], tablefmt="github"), ""]
    return out


def render(results_dir: Path, root: Path | None = None) -> dict[str, bytes]:
    """Every file of leaderboard/, as {relative path: content}."""
    tasks, subs, ok, failed, stale, unreadable, confirmed = collect(results_dir, root)
    files: dict[str, bytes] = {}
    n_ok = sum(len(v) for v in ok.values())
    n_self = self_reported([r for rs in ok.values() for r in rs], confirmed)
    out = ["# vqbench leaderboard", "",
           f"Generated by `vqbench leaderboard` from {n_ok} current result file(s) ({len(failed)} failed, "
           f"{len(stale)} stale excluded, {len(unreadable)} unreadable). Do not edit: "
           "`vqbench leaderboard --check` fails when this page is not what `results/` gives.",
           "Values are mean ± standard deviation over seeds; bold marks the best; "
           "↑ higher is better, ↓ lower is better. Reconstruction is always from `decode(codes)`.", "",
           f"Trust: {n_ok - n_self} of {n_ok} result(s) were produced or reproduced by a run the project controls "
           f"(their exact bytes are in `results/{LEDGER}`; `confirmed` counts them per row). {SELF_REPORTED} marks "
           f"a row with self-reported results ({n_self} in all): numbers that came with a submission and that no "
           "trusted run has produced or reproduced yet.", ""]
    if ok:
        out += ["## Overview", "", overview(tasks, subs, ok, confirmed), ""]
    out += family_sections(tasks, subs, ok, confirmed, files)
    out += closing_sections(tasks, subs, ok, failed)
    files[README] = "\n".join(out).encode()
    return files


def write_leaderboard(results_dir: Path, out: Path, root: Path | None = None) -> str:
    files = render(results_dir, root)
    out.mkdir(parents=True, exist_ok=True)
    for old in (out / PLOTS).glob("*.svg") if (out / PLOTS).exists() else []:
        if f"{PLOTS}/{old.name}" not in files:
            old.unlink()
    for name, content in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(content)
    return f"{len(files)} file(s)"


def check_leaderboard(results_dir: Path, out: Path, root: Path | None = None) -> list[str]:
    """What differs between leaderboard/ on disk and what results/ gives; empty when up to date."""
    files = render(results_dir, root)
    problems = [f"{out / n}: {'missing' if not (out / n).exists() else 'differs'}"
                for n, c in files.items() if not (out / n).exists() or (out / n).read_bytes() != c]
    if (out / PLOTS).exists():
        problems += [f"{p}: not produced by results/ (remove it)" for p in (out / PLOTS).glob("*.svg")
                     if f"{PLOTS}/{p.name}" not in files]
    return problems
