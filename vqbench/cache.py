"""Files under the cache home that harness code computes once and reuses (k-means references, FID
reference statistics, converted weights), each beside a sha256 of its bytes.

Only harness processes write them (jobs see the cache read-only: vqbench.sandbox.confine). A file
whose bytes do not match its digest, or that has none, is treated as missing and recomputed: a
corrupted or half-written cache can never become a number.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def read_verified(path: Path) -> bytes | None:
    """The file's bytes if its recorded sha256 matches them, else None."""
    path = Path(path)
    try:
        data, digest = path.read_bytes(), _digest_path(path).read_text().strip()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == digest else None


def write_verified(path: Path, data: bytes) -> None:
    """Write the bytes, then their digest, each by rename: a reader sees whole files or none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, content in ((path, data), (_digest_path(path), hashlib.sha256(data).hexdigest().encode())):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(tmp, target)
