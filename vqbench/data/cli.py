"""`vqbench data list` and `vqbench data fetch [NAME ...]`: what is cached, and getting the rest.

Hook into the main parser with `add_data_commands(subparsers)`; each subcommand sets
`func(args) -> int` (the exit status). Failures print one line, never a traceback.
"""
from __future__ import annotations

import argparse

from vqbench.data.sources import SOURCES, DataSourceError, fetch, status


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def cmd_list(args: argparse.Namespace) -> int:
    rows = status()
    width = max(len(name) for name, *_ in rows)
    for name, cached, folder, size in rows:
        src = SOURCES[name]
        state = f"cached   {_size(size):>9}  {folder}" if cached else f"missing  {'':>9}  (vqbench data fetch {name})"
        print(f"{name:<{width}}  {state}")
        print(f"{'':<{width}}  {src.description}; from {src.requirement}")
    missing = [name for name, cached, *_ in rows if not cached]
    print(f"{len(rows) - len(missing)} of {len(rows)} sources cached" + ("; fetch the rest with `vqbench data fetch`"
                                                                        if missing else ""))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    names = args.names or list(SOURCES)
    failed = 0
    for name in names:
        try:
            folder = fetch(name)
        except DataSourceError as e:
            print(f"error: {e}")
            failed += 1
            continue
        print(f"{name}: ok ({folder})")
    return 1 if failed else 0


def add_data_commands(subparsers) -> None:
    data = subparsers.add_parser("data", help="list and fetch the downloadable data and weights")
    sub = data.add_subparsers(dest="data_command", required=True)
    sub.add_parser("list", help="show each data source, cached or missing").set_defaults(func=cmd_list)
    fetch_p = sub.add_parser("fetch", help="download and verify data sources (default: all)")
    fetch_p.add_argument("names", nargs="*", metavar="NAME",
                         help=f"sources to fetch: {', '.join(SOURCES)}")
    fetch_p.set_defaults(func=cmd_fetch)
