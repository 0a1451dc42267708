"""SVG plots, deterministic (fixed hash salt, no dates): per task file with numeric swept fields,
utilization vs the first field, the primary metric vs it (vs bits/token when it is the codebook
size: rate vs fidelity) and the primary metric vs utilization, a row per value of the other fields; per
task, code usage over training steps. One colour and marker per submission across every plot, from the
sorted registry."""
from __future__ import annotations

import io

from vqbench.families import get_family
from vqbench.leaderboard.board import Board, summary
from vqbench.leaderboard.site import slug
from vqbench.metrics import METRICS

MARKERS = "osD^v<>pPXh*"
COINCIDE = 1e-3  # curves closer than this fraction of the axis range at every point coincide


def styles(board: Board) -> dict[str, dict]:
    """{submission: matplotlib style}: tab20 colours x markers over the sorted registry, so a
    submission keeps its look in every plot and page."""
    from matplotlib import colormaps
    colors = colormaps["tab20"].colors
    return {s: {"color": "#%02x%02x%02x" % tuple(round(255 * c) for c in colors[i % 20]),
                "marker": MARKERS[i % len(MARKERS)]} for i, s in enumerate(sorted(board.subs))}


def pyplot():
    """matplotlib.pyplot, headless, with SVG ids that depend on the content only."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    matplotlib.rcParams["svg.hashsalt"] = "vqbench"  # stable ids: the SVG is a pure function of results
    return plt


def svg(fig) -> bytes:
    """The figure as SVG bytes without dates (deterministic), then closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    pyplot().close(fig)
    return buf.getvalue()


def label(text: str) -> str:
    return text.replace("$", r"\$")  # untrusted names: no mathtext


def axis_label(name: str) -> str:
    spec = METRICS[name]
    return f"{spec.label or name}{f' ({spec.unit})' if spec.unit else ''} {'↑' if spec.higher_is_better else '↓'}"


def spans_decades(values: list[float]) -> bool:
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 10


def sweep_fields(file_tasks: list) -> tuple[str, ...] | None:
    """The swept fields of a task file when every value is a number: the first is the x axis, each
    combination of the others a row of panels. None for no sweep or a non-numeric one."""
    keys = {tuple(k for k, _ in t.sweep_point) for t in file_tasks}
    if len(keys) != 1 or not next(iter(keys)):
        return None
    if not all(isinstance(v, (int, float)) for t in file_tasks for _, v in t.sweep_point):
        return None
    return next(iter(keys))


def coinciding(curves: dict[str, list[tuple[float, float]]], span: float) -> list[list[str]]:
    """Groups of submissions whose curves have the same points within COINCIDE x span."""
    groups: list[list[str]] = []
    for s in sorted(curves):
        for g in groups:
            ref = curves[g[0]]
            if len(ref) == len(curves[s]) and all(x1 == x2 and abs(y1 - y2) <= COINCIDE * span
                                                  for (x1, y1), (x2, y2) in zip(ref, curves[s])):
                g.append(s)
                break
        else:
            groups.append([s])
    return [g for g in groups if len(g) > 1]


def short(field: str) -> str:
    return field.split(".")[-1]


def sweep_plot(base_id: str, file_tasks: list, board: Board, style: dict) -> tuple[bytes, list[str]] | None:
    """(SVG, captions) for a task file with numeric swept fields; None otherwise."""
    fields = sweep_fields(file_tasks)
    if fields is None:
        return None
    plt = pyplot()
    groups: dict[tuple, list] = {}
    for t in sorted(file_tasks, key=lambda t: [v for _, v in t.sweep_point]):
        groups.setdefault(t.sweep_point[1:], []).append(t)
    fig, axes = plt.subplots(len(groups), 3, figsize=(15, 4 * len(groups)), squeeze=False)
    captions = ["Shaded bands and error bars: Student-t 95% confidence intervals over seeds (none with one seed)."]
    for row, (rest, tasks) in zip(axes, groups.items()):
        where = ", ".join(f"{short(k)}={v}" for k, v in rest)
        captions += draw_row(row, tasks, short(fields[0]), where, board, style)
    fig.suptitle(base_id)
    legend = {}  # every submission once, whichever row it appears in
    for ax in axes[:, 0]:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(text, handle)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.legend(list(legend.values()), list(legend), fontsize=7, loc="center right", frameon=False)
    return svg(fig), captions


def draw_row(axes, tasks: list, x: str, where: str, board: Board, style: dict) -> list[str]:
    """Utilization and the primary metric against the swept field x (against bits/token when x is
    the codebook size: rate vs fidelity), and the primary metric against utilization; returns the
    captions naming coinciding curves."""
    primary = get_family(tasks[0].family).primary_metric
    rate = x == "codebook_size"
    suffix = f" ({where})" if where else ""
    panels = [(axes[0], "utilization", f"utilization vs {'K' if rate else x}{suffix}"),
              (axes[1], primary, f"{METRICS[primary].label or primary} vs {'rate (bits/token)' if rate else x}{suffix}")]
    curves = {p[1]: {} for p in panels}
    every = {p[1]: [] for p in panels}
    for s in sorted(board.subs):
        st = dict(style[s], markersize=5, linewidth=1.2)
        pts = []
        for t in tasks:
            rows = board.ok.get((t.id, s))
            u, m = (summary(rows, "utilization"), summary(rows, primary)) if rows else (None, None)
            if u and m:
                pts.append((t.sweep_point[0][1], sum(r["bits_per_token"] for r in rows) / len(rows), u, m))
        if not pts:
            continue
        for ax, name, _ in panels:
            xs = [p[1] if (rate and name != "utilization") else p[0] for p in pts]
            ys = [(p[2] if name == "utilization" else p[3]) for p in pts]
            ax.plot(xs, [y.mean for y in ys], label=label(board.subs[s].meta.display_name), **st)
            if any(y.half for y in ys):
                ax.fill_between(xs, [y.mean - (y.half or 0) for y in ys], [y.mean + (y.half or 0) for y in ys],
                                color=st["color"], alpha=0.15, linewidth=0)
            curves[name][s] = [(x, y.mean) for x, y in zip(xs, ys)]
            every[name] += [y.mean for y in ys]
        axes[2].errorbar([p[2].mean for p in pts], [p[3].mean for p in pts], xerr=[p[2].half or 0 for p in pts],
                         yerr=[p[3].half or 0 for p in pts], linestyle="none", elinewidth=0.8, **st)
    xvalues = [t.sweep_point[0][1] for t in tasks]
    for ax, name, title in panels:
        if (name == "utilization" or not rate) and spans_decades(xvalues):  # bits/token is already a log
            ax.set_xscale("log", base=2)
        if name != "utilization" and spans_decades(every[name]):
            ax.set_yscale("log")
        ax.set_xlabel("bits/token" if rate and name != "utilization" else ("K" if rate else x))
        ax.set_ylabel(axis_label(name))
        ax.set_title(title, fontsize=9)
    axes[0].set_ylim(0, 1.02)  # utilization is a fraction: keep the full scale visible
    if spans_decades(every[primary]):
        axes[2].set_yscale("log")
    axes[2].set_xlim(0, 1.02)
    axes[2].set_xlabel(axis_label("utilization"))
    axes[2].set_ylabel(axis_label(primary))
    axes[2].set_title(f"{METRICS[primary].label or primary} vs utilization (one point per task){suffix}", fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3)
    captions = []
    for (_, name, title) in panels:
        span = (max(every[name]) - min(every[name])) if every[name] else 0
        for g in coinciding(curves[name], span if span > 0 else abs(max(every[name] or [1])) or 1):
            captions.append(f"In “{title}” these curves coincide (within {COINCIDE:.1%} of the axis range at "
                            f"every point) and hide one another: "
                            + ", ".join(board.subs[s].meta.display_name for s in g) + ".")
    return captions


def sweep_plots(board: Board) -> dict[str, tuple[str, bytes, list[str]]]:
    """{task file base id: (file name under plots/, SVG, captions)} for files with current results."""
    by_file: dict[str, list] = {}
    for t in board.tasks.values():
        by_file.setdefault(t.base_id, []).append(t)
    style, out = styles(board), {}
    for base_id in sorted(by_file):
        if any((t.id, s) in board.ok for t in by_file[base_id] for s in board.subs):
            made = sweep_plot(base_id, by_file[base_id], board, style)
            if made is not None:
                out[base_id] = (f"{base_id.replace('/', '-')}.svg", *made)
    return out


def usage_plot(tid: str, board: Board, style: dict) -> tuple[bytes, list[str]] | None:
    """(SVG, captions): utilization over training steps on one task, every submission overlaid (the
    mean over seeds, a band from the lowest to the highest seed); None when no result has a curve."""
    lines = {}
    for s in sorted(board.subs):
        curves = [r["train"].get("usage_curve") for r in sorted(board.ok.get((tid, s), []), key=lambda r: r["seed"])]
        curves = [c for c in curves if c]
        steps = [row[0] for row in curves[0]] if curves else []
        same = [c for c in curves if [row[0] for row in c] == steps]  # seeds sampled at the same steps
        if same:
            per_step = list(zip(*[[row[1] for row in c] for c in same]))
            lines[s] = (steps, [sum(v) / len(v) for v in per_step], [min(v) for v in per_step],
                        [max(v) for v in per_step], len(same))
    if not lines:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for s, (steps, mean, low, high, n) in lines.items():
        ax.plot(steps, mean, label=label(f"{board.subs[s].meta.display_name} ({n} seed{'s' if n > 1 else ''})"),
                **dict(style[s], markersize=3, linewidth=1.2))
        if n > 1:
            ax.fill_between(steps, low, high, color=style[s]["color"], alpha=0.15, linewidth=0)
    values = [v for line in lines.values() for v in line[1]]
    if spans_decades(values):
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("codes used in the window / K")
    ax.set_title(f"{tid}: code usage during training", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0, 0.72, 1))
    fig.legend(fontsize=7, loc="center right", frameon=False)
    image = svg(fig)
    captions = ["Each point: the share of the K codes emitted in the window of steps before it (counted by the "
                "harness while the submission trains); line: mean over seeds; band: lowest to highest seed."]
    span = (max(values) - min(values)) or 1
    for g in coinciding({s: list(zip(line[0], line[1])) for s, line in lines.items()}, span):
        captions.append("These curves coincide and hide one another: "
                        + ", ".join(board.subs[s].meta.display_name for s in g) + ".")
    return image, captions


def usage_plots(board: Board) -> dict[str, tuple[str, bytes, list[str]]]:
    """{task id: (file name under plots/, SVG, captions)} for tasks whose results carry usage curves."""
    style, out = styles(board), {}
    for tid in sorted({t for (t, _) in board.ok}):
        made = usage_plot(tid, board, style)
        if made is not None:
            out[tid] = (f"usage-{slug(tid)}.svg", *made)
    return out
