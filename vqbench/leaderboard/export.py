"""leaderboard/results.csv (one row per result x metric) and results.json (one record per result):
every current ok result, for analysis elsewhere. Sorted, so regenerating gives the same bytes."""
from __future__ import annotations

import csv
import io
import json

from vqbench.leaderboard.board import Board

FIELDS = ["submission", "task", "seed", "metric", "value", "bits_per_token", "submission_hash", "task_hash",
          "sha256", "confirmed", "path"]


def records(board: Board) -> list[dict]:
    out = []
    for (tid, s), rows in sorted(board.ok.items()):
        for r in sorted(rows, key=lambda r: r["seed"]):
            path, digest = board.files[(tid, s, r["seed"])]
            out.append({"submission": s, "task": tid, "seed": r["seed"], "bits_per_token": r["bits_per_token"],
                        "metrics": dict(sorted(r["metrics"].items())),
                        "submission_hash": r["provenance"]["submission_hash"],
                        "task_hash": r["provenance"]["task_hash"], "sha256": digest,
                        "confirmed": board.is_confirmed(r), "path": f"results/{path}"})
    return out


def to_json(board: Board) -> bytes:
    return (json.dumps(records(board), indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def to_csv(board: Board) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, FIELDS, lineterminator="\n")
    w.writeheader()
    for rec in records(board):
        for metric, value in rec["metrics"].items():
            w.writerow({**{k: v for k, v in rec.items() if k in FIELDS}, "metric": metric,
                        "value": "" if value is None else repr(float(value))})
    return buf.getvalue().encode()
