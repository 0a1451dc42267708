"""What every leaderboard output reads: the current results sorted out of results/ (`collect`), and
their statistics: confidence intervals over seeds, "best" only where separated, family win rates.

Only current results count: a result whose submission hash or task hash differs from the code and
YAML on disk is stale, excluded and counted. Every number shown comes from a result file.
"""
from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from vqbench.families import get_family
from vqbench.metrics import METRICS
from vqbench.results import iter_results, why_stale
from vqbench.schema import ConfigError
from vqbench.submissions import get_submission, list_submissions
from vqbench.tasks import load_registry, not_applicable
from vqbench.trust import file_digest, is_confirmed, load_ledger

CONFIDENCE = 0.95
CI_NAME = "Student-t 95% confidence interval of the mean over seeds"
BOOTSTRAP = 400  # resamples of the seeds behind a win rate; a fixed RNG seed keeps the page deterministic
WIN_RATE_CI_NAME = f"bootstrap 95% interval over seeds ({BOOTSTRAP} resamples of each task's seeds)"


@dataclass
class Board:
    tasks: dict  # task id -> Task (the registry)
    subs: dict  # submission name -> Submission (registered, loadable)
    ok: dict = field(default_factory=lambda: defaultdict(list))  # (task id, submission) -> current ok results
    failed: list = field(default_factory=list)  # current failed results
    stale: list = field(default_factory=list)  # (path, why)
    unreadable: list = field(default_factory=list)
    confirmed: set = field(default_factory=set)  # (task id, submission, seed) whose bytes are in the ledger
    files: dict = field(default_factory=dict)  # (task id, submission, seed) -> (path relative to results/, sha256)

    def is_confirmed(self, r: dict) -> bool:
        return (r["task"], r["submission"], r.get("seed")) in self.confirmed

    def self_reported(self, rows: list[dict]) -> int:
        """How many of these results no trusted run produced or reproduced."""
        return sum(not self.is_confirmed(r) for r in rows)

    def family_tasks(self, family: str) -> list[str]:
        return sorted({tid for (tid, _) in self.ok if self.tasks[tid].family == family})

    @property
    def families(self) -> list[str]:
        return sorted({self.tasks[tid].family for (tid, _) in self.ok})


def collect(results_dir: Path, root: Path | None = None) -> Board:
    """Sort result files into current ok / current failed / stale. A results folder that does not
    exist or holds no result file is an error: regenerating from it would empty the leaderboard."""
    results_dir = Path(results_dir)
    paths = list(iter_results(results_dir)) if results_dir.is_dir() else []
    if not paths:
        why = "does not exist" if not results_dir.exists() else "holds no result file (seed-*.json)"
        raise ConfigError(None, "--results-dir", f"{results_dir} {why}",
                          "point --results-dir at the results/ folder of a project (nothing was written)")
    subs = {}
    for name in list_submissions(root=root):
        try:
            subs[name] = get_submission(name, root)
        except ConfigError:
            pass
    board = Board(load_registry(root), subs)
    ledger = load_ledger(results_dir)
    for path, result in paths:
        if result is None:
            board.unreadable.append(path)
            continue
        task = board.tasks.get(result.get("task"))
        if result.get("submission") not in subs:
            board.stale.append((path, "submission not registered"))
        elif task is None:
            board.stale.append((path, "task no longer in the registry"))
        elif why := why_stale(result, subs[result["submission"]].hash, task.hash):
            board.stale.append((path, why))
        elif result.get("status") == "ok":
            key = (task.id, result["submission"], result.get("seed"))
            board.ok[key[:2]].append(result)
            board.files[key] = (path.relative_to(results_dir).as_posix(), file_digest(path))
            if is_confirmed(results_dir, path, ledger):
                board.confirmed.add(key)
        else:
            board.failed.append(result)
    return board


@lru_cache(maxsize=None)
def t_quantile(df: int) -> float:
    from scipy.stats import t
    return float(t.ppf(0.5 + CONFIDENCE / 2, df))


@dataclass(frozen=True)
class Summary:
    """Mean over seeds and the half-width of its confidence interval (None with one seed)."""
    mean: float
    half: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Summary | None:
        if not values:
            return None
        n, mean = len(values), statistics.fmean(values)
        half = t_quantile(n - 1) * statistics.stdev(values) / math.sqrt(n) if n > 1 else None
        return cls(mean, half, n)

    def fmt(self, spec: str) -> str:
        return format(self.mean, spec) + (f" ± {format(self.half, spec)}" if self.half is not None else "")


def summary(rows: list[dict], name: str) -> Summary | None:
    """The metric over these results (seeds); None unless every one reports it."""
    values = [r["metrics"].get(name) for r in rows]
    return Summary.of(values) if values and all(v is not None for v in values) else None


def best_of(name: str, sums: dict[str, Summary | None]) -> set[str]:
    """The leader on `name`, only when it and the runner-up have two or more seeds and their
    confidence intervals do not overlap; an unseparated lead is no "best"."""
    sign = 1 if METRICS[name].higher_is_better else -1
    ranked = sorted(((s, v) for s, v in sums.items() if v is not None and math.isfinite(v.mean)),
                    key=lambda sv: -sign * sv[1].mean)
    if len(ranked) < 2:
        return set()
    (lead, a), (_, b) = ranked[0], ranked[1]
    if a.half is None or b.half is None:
        return set()
    return {lead} if sign * (a.mean - b.mean) > a.half + b.half else set()


def win_rate(name: str, means: dict[str, float], s: str) -> float | None:
    """Fraction of the other submissions on one task that `s` beats on `name` (ties count half)."""
    others = [v for o, v in means.items() if o != s]
    if s not in means or not others:
        return None
    sign = 1 if METRICS[name].higher_is_better else -1
    return sum(1.0 if sign * (means[s] - v) > 0 else 0.5 if means[s] == v else 0.0 for v in others) / len(others)


@dataclass
class Standing:
    """One submission's row of a family ranking."""
    submission: str
    win_rate: float | None  # mean over its tasks of the per-task win rate on the primary metric
    utilization_win_rate: float | None
    tasks: int  # tasks with current results
    applicable: int  # tasks it could have run (not-applicable pairs left out)
    not_applicable: int
    seeds: tuple[int, int]  # fewest and most seeds behind one of its tasks
    results: int
    confirmed: int
    win_rate_ci: tuple[float, float] | None = None  # WIN_RATE_CI_NAME
    rank: int | None = None  # None: not ranked, `note` says why

    @property
    def note(self) -> str:
        notes = []
        if self.tasks < self.applicable:
            notes.append(f"incomplete: {self.tasks}/{self.applicable} tasks")
        if self.seeds[0] < 2:
            notes.append("single seed" + (" on some tasks" if self.seeds[1] > 1 else ""))
        return "; ".join(notes)


def mean_win_rate(name: str, means: dict[str, dict[str, float]], s: str, tids: list[str]) -> float | None:
    rates = [w for t in tids if (w := win_rate(name, means[t], s)) is not None]
    return statistics.fmean(rates) if rates else None


def win_rate_intervals(board: Board, name: str, have: dict[str, list[str]]) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap of each submission's mean win rate: each (task, submission)'s seeds are
    resampled with replacement and every win rate recomputed from the resampled means."""
    values = {k: [r["metrics"][name] for r in rs] for k, rs in sorted(board.ok.items())
              if k[0] in {t for ts in have.values() for t in ts} and summary(rs, name)}
    rng, draws = random.Random(0), {s: [] for s in have}
    for _ in range(BOOTSTRAP):
        means: dict[str, dict[str, float]] = {}
        for (t, s), v in values.items():
            means.setdefault(t, {})[s] = statistics.fmean(rng.choices(v, k=len(v)))
        for s in have:
            if (w := mean_win_rate(name, means, s, [t for t in have[s] if t in means])) is not None:
                draws[s].append(w)
    lo, hi = (1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2
    return {s: (sorted(d)[int(lo * (len(d) - 1))], sorted(d)[math.ceil(hi * (len(d) - 1))]) for s, d in draws.items() if d}


def family_ranking(board: Board, family: str) -> list[Standing]:
    """Mean win rate over the family's tasks (HELM's aggregate: no single task's scale dominates),
    with a bootstrap interval over seeds. Only complete rows with two or more seeds on every task are
    ranked; the rest follow, labelled."""
    primary = get_family(family).primary_metric
    tids = board.family_tasks(family)
    means = {n: {tid: {s: m.mean for (t, s), rs in board.ok.items() if t == tid if (m := summary(rs, n))}
                 for tid in tids} for n in (primary, "utilization")}
    subs = sorted({s for (t, s) in board.ok if t in tids})
    have = {s: [t for t in tids if (t, s) in board.ok and not_applicable(board.subs[s], board.tasks[t]) is None]
            for s in subs}
    intervals = win_rate_intervals(board, primary, have)
    rows = []
    for s in subs:
        applicable = [t for t in tids if not_applicable(board.subs[s], board.tasks[t]) is None]
        have_s = have[s]
        rates = {n: mean_win_rate(n, means[n], s, have_s) for n in means}
        seeds = [len(board.ok[(t, s)]) for t in have_s] or [0]  # [0]: results on not-applicable tasks only
        rs = [r for t in have_s for r in board.ok[(t, s)]]
        rows.append(Standing(s, rates[primary], rates["utilization"], len(have_s), len(applicable),
                             len(tids) - len(applicable), (min(seeds), max(seeds)), len(rs),
                             len(rs) - board.self_reported(rs), intervals.get(s)))
    rows.sort(key=lambda r: (bool(r.note), -(r.win_rate if r.win_rate is not None else -1), r.submission))
    for i, r in enumerate(x for x in rows if not x.note):
        r.rank = i + 1
    return rows


LEVEL_METRICS = ("utilization", "perplexity_ratio")  # shown per level of a hierarchical task


def level_table(board: Board, task, order: list[str]) -> tuple[list[str], list[tuple]] | None:
    """A hierarchical task's code usage per level (each result's `levels`), mean over seeds: (column
    heads, [(submission, results, [(metric, mean or None), ...])]); None for a single-level task."""
    if not task.quantizer.levels:
        return None
    heads = [f"level {i} (K = {k}) {METRICS[n].label}" for i, k in enumerate(task.quantizer.level_sizes)
             for n in LEVEL_METRICS]
    rows = []
    for s in order:
        rs = [r for r in board.ok[(task.id, s)] if isinstance(r.get("levels"), list)]
        cells = [(n, statistics.fmean(r["levels"][i][n] for r in rs) if rs else None)
                 for i in range(len(task.quantizer.level_sizes)) for n in LEVEL_METRICS]
        rows.append((s, len(rs), cells))
    return heads, rows


def task_order(board: Board, tid: str) -> list[str]:
    """Submissions on a task, multi-seed rows first, each group best first on the primary metric."""
    primary = get_family(board.tasks[tid].family).primary_metric
    sign = 1 if METRICS[primary].higher_is_better else -1

    def key(s):
        rows = board.ok[(tid, s)]
        m = summary(rows, primary)
        return (len(rows) < 2, m is None, -sign * m.mean if m else 0, s)

    return sorted((s for (t, s) in board.ok if t == tid), key=key)


@dataclass
class Comparison:
    """One submission's score on one task beside every other current submission's (`vqbench run`'s end)."""
    task: str
    submission: str
    metric: str
    score: Summary | None
    rank: int | None  # by seed-mean among the submissions with results on the task
    of: int
    best_other: tuple[str, Summary] | None  # the best other submission and its score


def compare(board: Board, submissions: list[str], task_ids: list[str]) -> list[Comparison]:
    out = []
    for tid in task_ids:
        primary = get_family(board.tasks[tid].family).primary_metric
        sign = 1 if METRICS[primary].higher_is_better else -1
        scores = {s: m for (t, s), rs in board.ok.items() if t == tid if (m := summary(rs, primary))}
        ranked = sorted(scores, key=lambda s: (-sign * scores[s].mean, s))
        for s in submissions:
            if (tid, s) not in board.ok:
                continue
            others = [o for o in ranked if o != s]
            out.append(Comparison(tid, s, primary, scores.get(s), ranked.index(s) + 1 if s in scores else None,
                                  len(ranked), (others[0], scores[others[0]]) if others else None))
    return out
