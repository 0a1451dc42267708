"""`vqbench` command line: tasks, submissions, metrics, data, run, validate, leaderboard."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from vqbench.paths import project_root
from vqbench.schema import ConfigError



class HELP(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help says its default, unless there is none to say (None, a flag's False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: give comma-separated integers, e.g. 0,1,2") from None


def _nothing_matches(what: str, pattern: str, how: str) -> ConfigError:
    return ConfigError(None, what, f"nothing matches {pattern!r}", f"list every one with `{how}`")


def cmd_tasks_list(args) -> int:
    from tabulate import tabulate
    from vqbench.tasks import list_tasks
    tasks = list_tasks(args.pattern, args.tier)
    if not tasks:
        raise _nothing_matches("pattern", args.pattern + (f" (tier {args.tier})" if args.tier else ""),
                               "vqbench tasks list")
    if args.json:
        print(json.dumps([{"id": t.id, "family": t.family, "tier": t.tier, "version": t.version,
                           "codebook_size": t.quantizer.codebook_size, "levels": t.quantizer.level_sizes,
                           "dim": t.quantizer.dim, "steps": t.train.steps, "seeds": list(t.seeds), "hash": t.hash,
                           "description": t.description} for t in tasks], indent=2))
        return 0
    rows = [(t.id, t.tier, f"v{t.version}", "+".join(map(str, t.quantizer.level_sizes)), t.quantizer.dim, t.train.steps,
             ",".join(map(str, t.seeds)), t.hash) for t in tasks]
    print(tabulate(rows, headers=["task", "tier", "version", "K", "dim", "steps", "seeds", "hash"]))
    print(f"\n{len(tasks)} task(s)")
    return 0


def cmd_tasks_show(args) -> int:
    from vqbench.tasks import get_task
    task = get_task(args.task_id)
    print(json.dumps({**task.spec(), "description": task.description, "seeds": list(task.seeds),
                      "resources": task.resources.__dict__, "file": str(task.path), "hash": task.hash},
                     indent=2, default=str))
    return 0


def cmd_submissions_list(args) -> int:
    from tabulate import tabulate
    from vqbench.submissions import get_submission, list_submissions
    rows = []
    names = list_submissions(args.pattern)
    if not names:
        raise _nothing_matches("pattern", args.pattern, "vqbench submissions list")
    for name in names:
        try:
            sub = get_submission(name)
            missing = sub.missing_requirements()
            rows.append((name, sub.meta.display_name, sub.meta.entrypoint, sub.hash,
                         f"needs {', '.join(missing)}" if missing else "ok"))
        except ConfigError as e:
            rows.append((name, "", "", "", f"invalid: {e}"))
    if args.json:
        keys = ("name", "display_name", "entrypoint", "hash", "status")
        print(json.dumps([dict(zip(keys, row)) for row in rows], indent=2))
        return 0
    print(tabulate(rows, headers=["submission", "display name", "entrypoint", "hash", "status"]))
    return 0


def _data_folders(pairs: list[str], legacy_root: str | None) -> dict[str, Path]:
    """`--data FAMILY=PATH` (repeatable) and the deprecated `--data-root PATH` as {family: folder}."""
    from vqbench.families import get_family, list_families
    folders: dict[str, Path] = {}
    for pair in pairs:
        family, sep, path = pair.partition("=")
        if not sep or not path or family not in list_families():
            raise ConfigError(None, "--data", f"{pair!r} is not FAMILY=PATH with a registered family",
                              f"write e.g. --data {next(iter(list_families()))}=/path (families: "
                              f"{', '.join(list_families())})")
        if not get_family(family).takes_data_root:
            raise ConfigError(None, "--data", f"family {family!r} reads no data folder",
                              f"give it to one of: {', '.join(f for f in list_families() if get_family(f).takes_data_root)}")
        folders[family] = Path(path).expanduser().resolve()
    if legacy_root:
        family = next(f for f in list_families() if get_family(f).legacy_data_root)
        print(f"warning: --data-root is deprecated; use --data {family}={legacy_root}", file=sys.stderr)
        folders.setdefault(family, Path(legacy_root).expanduser().resolve())
    return folders


def cmd_run(args) -> int:
    from vqbench.families import data_root_env
    from vqbench.sandbox import exclusive_project
    root = project_root()
    for family, folder in _data_folders(args.data or [], args.data_root).items():
        os.environ[data_root_env(family)] = str(folder)  # the runner forwards VQBENCH_* to every worker
    results_dir = Path(args.results_dir) if args.results_dir else root / "results"
    if args.dry_run:  # reads only: no lock, nothing imported or run
        jobs, skipped, _, _ = _plan(args, results_dir)
        for job in jobs:
            print(f"{job.submission.name}\t{job.task.id}\tseed {job.seed}")
        print(f"{len(jobs)} job(s) would run, {skipped} already done (--force reruns them)", file=sys.stderr)
        return 0
    with exclusive_project(root):
        return _run_locked(args, root, results_dir)


def _submissions(names: list[str]) -> list:
    """--submission values: names, folders, or globs over registered names (matching none is an error)."""
    from vqbench.submissions import get_submission, list_submissions
    chosen = {}
    for name in names:
        if any(c in name for c in "*?[") and not Path(name).is_dir():
            matched = list_submissions(name)
            if not matched:
                raise _nothing_matches("--submission", name, "vqbench submissions list")
            chosen.update((n, get_submission(n)) for n in matched)
        else:
            sub = get_submission(name)
            chosen[sub.name] = sub
    return list(chosen.values())


def _plan(args, results_dir: Path):
    from vqbench.runner import plan
    from vqbench.tasks import list_tasks
    submissions = _submissions(args.submission)
    tasks = list_tasks(args.tasks or ["*"], args.tier)
    if not tasks:
        raise ConfigError(None, "--tasks", f"no {args.tier or ''} task matches {' or '.join(args.tasks or ['*'])!r}",
                          "list them with `vqbench tasks list`")
    jobs, skipped = plan(submissions, tasks, args.seeds, results_dir, args.force)
    return jobs, skipped, submissions, tasks


def _run_locked(args, root: Path, results_dir: Path) -> int:
    from vqbench.runner import run
    from vqbench.validate import import_problem
    jobs, skipped, submissions, tasks = _plan(args, results_dir)
    # Fail fast on an unimportable submission, before any job starts; with nothing to run, start nothing.
    for sub in {job.submission.name: job.submission for job in jobs}.values():
        if problem := import_problem(sub, root, results_dir):
            raise ConfigError(sub.folder / "submission.yaml", "entrypoint", problem,
                              f"run `vqbench validate {sub.name}` for every check")
    print(f"{len(jobs)} job(s) to run, {skipped} already done (resume; --force reruns them)", file=sys.stderr)
    from vqbench.tasks import not_applicable
    for sub in submissions:
        if na := [t.id for t in tasks if not_applicable(sub, t)]:
            print(f"not applicable to {sub.name} (it needs {', '.join(sub.meta.needs)}), not run: {', '.join(na)}",
                  file=sys.stderr)
    if jobs:
        from vqbench.sandbox import confinement_in_force, confinement_warning
        state = confinement_in_force()
        print(f"confinement of submission code: {state}", file=sys.stderr)
        if warning := confinement_warning(state):
            print(warning, file=sys.stderr)
    summary = run(jobs, root, results_dir, args.executor, args.workers, args.ray_address, args.timeout,
                  show_progress=not args.quiet, trusted=args.trusted)
    print(f"done: {len(summary.done)} ok, {len(summary.failed)} failed, {skipped} skipped; "
          f"results in {results_dir}", file=sys.stderr)
    for result in summary.failed:
        print(f"  FAILED {result['submission']} | {result['task']} | seed {result['seed']}: "
              f"{result['error']['reason']}", file=sys.stderr)
    _print_scores(root, results_dir, [s.name for s in submissions], sorted({j.task.id for j in jobs}))
    if args.json:
        keep = ("submission", "task", "seed", "status", "bits_per_token", "metrics")
        print(json.dumps({"results_dir": str(results_dir), "skipped": skipped,
                          "done": [{k: r.get(k) for k in keep} for r in summary.done],
                          "failed": [{**{k: r.get(k) for k in keep[:4]}, "reason": r["error"]["reason"]}
                                     for r in summary.failed]}, indent=2))
    return 1 if summary.failed else 0


def _print_scores(root: Path, results_dir: Path, submissions: list[str], task_ids: list[str]) -> None:
    """The run's scores beside every other current submission's on the same tasks (stderr)."""
    from tabulate import tabulate
    from vqbench.leaderboard.board import collect, compare
    from vqbench.metrics import METRICS
    if not task_ids:
        return
    rows = []
    for c in compare(collect(results_dir, root), submissions, task_ids):
        spec = METRICS[c.metric].fmt
        rows.append((c.task, c.submission, f"{c.metric} {'↑' if METRICS[c.metric].higher_is_better else '↓'}",
                     c.score.fmt(spec) if c.score else "n/a", f"{c.rank}/{c.of}" if c.rank else "n/a",
                     f"{c.best_other[0]}: {c.best_other[1].fmt(spec)}" if c.best_other else "(none yet)"))
    if rows:
        print("\nscores (mean ± Student-t 95% interval over seeds) beside the best other current submission:\n"
              + tabulate(rows, headers=["task", "submission", "metric", "score", "rank", "best other"]),
              file=sys.stderr)


def cmd_validate(args) -> int:
    from vqbench.sandbox import exclusive_project
    from vqbench.submissions import submission_folder
    from vqbench.validate import format_check, validate
    root = project_root()
    # an unknown name is a usage error (exit 2), as in every command; a broken submission.yaml is
    # the first check's failure (exit 1), reported with the others
    submission_folder(args.submission)
    results_dir = Path(args.results_dir) if args.results_dir else root / "results"
    from vqbench.sandbox import confinement_in_force, confinement_warning
    state = confinement_in_force()
    print(f"vqbench validate {args.submission} (confinement: {state})", flush=True)
    if warning := confinement_warning(state):
        print(warning, flush=True)
    with exclusive_project(root):
        checks = validate(args.submission, root, results_dir, args.task, args.seed,
                          args.reproduce or args.sample is not None, args.timeout,
                          on_check=lambda c: print(format_check(c), flush=True), sample=args.sample,
                          sample_seed=args.sample_seed, record_confirmed=args.record)
    failed = [c for c in checks if not c.ok]
    print(f"\n{len(checks)} check(s), {len(failed)} failed: "
          f"{'the submission is valid' if not failed else 'the submission is NOT valid'}")
    return 1 if failed else 0


def cmd_leaderboard(args) -> int:
    from vqbench.leaderboard import check_leaderboard, write_leaderboard
    root = project_root()
    results_dir = Path(args.results_dir) if args.results_dir else root / "results"
    out = Path(args.out) if args.out else root / "leaderboard"
    if args.check:
        problems = check_leaderboard(results_dir, out)
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print("leaderboard/ is out of date: run `vqbench leaderboard`", file=sys.stderr)
            return 1
        print(f"{out} matches {results_dir}", file=sys.stderr)
        return 0
    from vqbench.sandbox import exclusive_project
    with exclusive_project(root):  # a running job's guard would undo these writes and fail the job
        report = write_leaderboard(results_dir, out)
    print(f"wrote {out}: {report}", file=sys.stderr)
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def cmd_data_list(args) -> int:
    from vqbench.families.sources import all_sources, status
    rows, sources = status(), all_sources()
    width = max((len(name) for name, *_ in rows), default=0)
    for name, cached, folder, size in rows:
        state = f"cached   {_size(size):>9}  {folder}" if cached else f"missing  {'':>9}  (vqbench data fetch {name})"
        print(f"{name:<{width}}  {state}")
        print(f"{'':<{width}}  {sources[name].description}; from {sources[name].requirement}")
    missing = [name for name, cached, *_ in rows if not cached]
    print(f"{len(rows) - len(missing)} of {len(rows)} sources cached" + ("; fetch the rest with `vqbench data fetch`"
                                                                        if missing else ""))
    return 0


def cmd_data_fetch(args) -> int:
    from vqbench.families.sources import DataSourceError, all_sources, fetch
    if unknown := [n for n in args.names if n not in all_sources()]:
        raise ConfigError(None, "NAME", f"no data source {', '.join(map(repr, unknown))}",
                          f"known: {', '.join(all_sources())} (`vqbench data list`)")
    failed = 0
    for name in args.names or list(all_sources()):
        try:
            if not all_sources()[name].cached():
                print(f"{name}: downloading {all_sources()[name].requirement}", flush=True)
            folder = fetch(name, progress=sys.stdout.isatty())
        except DataSourceError as e:
            print(f"error: {e}")
            failed += 1
            continue
        print(f"{name}: ok ({folder})")
    return 1 if failed else 0


def cmd_metrics(args) -> int:
    from tabulate import tabulate
    from vqbench.families import get_family, list_families
    from vqbench.metrics import CODE_METRICS, METRICS
    families = list_families()

    def reported_by(name: str) -> str:
        if name in CODE_METRICS or name == "bits_per_token":
            return "every task"
        return ", ".join(f for f in families if name in get_family(f).metrics) or "no family"

    cell = (lambda text: text.replace("|", "\\|")) if args.markdown else str
    rows = [(s.name, cell(s.label), "↑" if s.higher_is_better else "↓", s.unit, reported_by(s.name), cell(s.doc))
            for s in sorted(METRICS.values(), key=lambda s: s.name)]
    print(tabulate(rows, headers=["metric", "label", "better", "unit", "reported by", "definition"],
                   tablefmt="github" if args.markdown else "simple"))
    return 0


def _add_registry_commands(sub) -> None:
    tasks = sub.add_parser("tasks", help="the task registry", formatter_class=HELP).add_subparsers(
        dest="action", required=True)
    p = tasks.add_parser("list", help="list tasks matching a glob", formatter_class=HELP)
    p.add_argument("pattern", nargs="?", default="*", help="glob over task ids or task file ids; matching none is an error")
    p.add_argument("--tier", choices=["lite", "full"], help="only tasks of this tier (default: both)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=cmd_tasks_list)
    p = tasks.add_parser("show", help="show one task's resolved spec", formatter_class=HELP)
    p.add_argument("task_id", help="a task id, e.g. 'synthetic/codebook-scaling@codebook_size=4096'")
    p.set_defaults(func=cmd_tasks_show)

    subs = sub.add_parser("submissions", help="registered quantizers", formatter_class=HELP).add_subparsers(
        dest="action", required=True)
    p = subs.add_parser("list", help="list submissions matching a glob", formatter_class=HELP)
    p.add_argument("pattern", nargs="?", default="*", help="glob over submission names; matching none is an error")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=cmd_submissions_list)

    p = sub.add_parser("metrics", help="every registered metric: label, direction, unit, definition",
                       formatter_class=HELP)
    p.add_argument("--markdown", action="store_true", help="a markdown table (docs)")
    p.set_defaults(func=cmd_metrics)

    data = sub.add_parser("data", help="list and fetch the downloadable data and weights",
                          formatter_class=HELP).add_subparsers(dest="data_command", required=True)
    data.add_parser("list", help="show each data source, cached or missing",
                    formatter_class=HELP).set_defaults(func=cmd_data_list)
    p = data.add_parser("fetch", help="download and verify data sources (default: all)", formatter_class=HELP)
    p.add_argument("names", nargs="*", metavar="NAME", help="sources to fetch (see `vqbench data list`)")
    p.set_defaults(func=cmd_data_fetch)


def _add_run_command(sub) -> None:
    p = sub.add_parser("run", help="train and evaluate submissions on tasks", formatter_class=HELP)
    p.add_argument("--submission", action="append", required=True,
                   help="name, folder or glob over names (e.g. 'ext_*'); repeatable")
    p.add_argument("--tasks", action="append", help="glob over task ids, e.g. 'synthetic/*'; repeatable (default: all)")
    p.add_argument("--tier", choices=["lite", "full"], default="lite", help="which tier's tasks to run")
    p.add_argument("--seeds", type=_seeds, help="comma-separated; default: each task's own seeds")
    p.add_argument("--results-dir", help="default: results/ in the project")
    p.add_argument("--executor", choices=["ray", "serial"], default="ray",
                   help="ray: parallel jobs; serial: one at a time in this process's children (debugging, CI)")
    p.add_argument("--workers", type=int, help="local Ray CPUs (default: all cores)")
    p.add_argument("--ray-address", help="attach to an existing Ray cluster, e.g. 127.0.0.1:6379")
    p.add_argument("--timeout", type=float, help="seconds per job (default: the task's resources.timeout_s)")
    p.add_argument("--force", action="store_true", help="rerun jobs that already have a current result")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--dry-run", action="store_true", help="print the jobs that would run (one per line) and exit")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON on stdout")
    p.add_argument("--trusted", action="store_true",
                   help="enter each result this run produces in <results-dir>/confirmed.json: for runs the project "
                        "controls (maintainers, on main); CI refuses pull requests that change that file")
    p.add_argument("--data", action="append", metavar="FAMILY=PATH",
                   help="a family's data folder for full-tier tasks (sets $VQBENCH_DATA_<FAMILY>); repeatable")
    p.add_argument("--data-root", help="deprecated (before --data existed): the data folder of the family that reads "
                                            "it; use --data FAMILY=PATH")
    p.set_defaults(func=cmd_run)


def _add_check_commands(sub) -> None:
    p = sub.add_parser("validate", help="check a submission: schema, contract, anti-cheat probes, smoke run",
                       formatter_class=HELP)
    p.add_argument("submission", help="name under submissions/ or a folder")
    p.add_argument("--task", help="task id whose dim/K the contract checks use (default: the smoke task's); "
                                  "with --reproduce, the task to reproduce")
    p.add_argument("--seed", type=int, help="with --reproduce: the seed to reproduce (default: any committed)")
    p.add_argument("--reproduce", action="store_true", help="rerun a committed result and compare its metrics")
    p.add_argument("--sample", type=int, metavar="N",
                   help="reproduce N committed results drawn at random now (implies --reproduce; CI uses it)")
    p.add_argument("--sample-seed", type=int, help="replay a draw of --sample (the report prints its seed)")
    p.add_argument("--record", action="store_true",
                   help="enter each reproduced result in results/confirmed.json (maintainers, on main)")
    p.add_argument("--results-dir", help="where committed results are (default: results/)")
    p.add_argument("--timeout", type=float, help="seconds for the contract checks and for each run")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("leaderboard", help="regenerate leaderboard/ (markdown, plots, site/, exports) from results/",
                       formatter_class=HELP)
    p.add_argument("--results-dir", help="results to read (default: results/ in the project); a folder that does not "
                                         "exist or holds no result is an error and nothing is written")
    p.add_argument("--out", help="folder to write (default: leaderboard/ in the project)")
    p.add_argument("--check", action="store_true", help="exit 1 when leaderboard/ is not what results/ gives")
    p.set_defaults(func=cmd_leaderboard)


def build_parser() -> argparse.ArgumentParser:
    from vqbench import __version__
    parser = argparse.ArgumentParser(prog="vqbench", description=__doc__, formatter_class=HELP)
    parser.add_argument("--version", action="version", version=f"vqbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_registry_commands(sub)
    _add_run_command(sub)
    _add_check_commands(sub)
    return parser


def _interrupt(signum, frame) -> None:
    # SIGTERM (kill, timeout, a scheduler) unwinds like Ctrl-C: every supervisor's `finally` kills its
    # job's process group; the default action would end the driver alone and leave its running job behind
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_main_thread else None
    try:
        return args.func(args)
    except ConfigError as e:  # a usage error: unknown name, pattern matching nothing, bad value (argparse's code too)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # results are written atomically: rerunning resumes
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
