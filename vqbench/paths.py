"""Where things live: the project root (tasks/, submissions/, results/) and the cache home."""
from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """$VQBENCH_ROOT, else the nearest folder upward from cwd holding tasks/, else the checkout."""
    if env := os.environ.get("VQBENCH_ROOT"):
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "tasks").is_dir() and (folder / "submissions").is_dir():
            return folder
    return Path(__file__).resolve().parent.parent


def cache_home() -> Path:
    """$VQBENCH_HOME, else $XDG_CACHE_HOME/vqbench, else ~/.cache/vqbench: downloaded data, weights,
    k-means optima. (Children get the resolved path as $VQBENCH_HOME: a confined one's XDG_CACHE_HOME
    is its scratch.)"""
    home = Path(os.environ.get("VQBENCH_HOME") or
                Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vqbench")
    home.mkdir(parents=True, exist_ok=True)
    return home
