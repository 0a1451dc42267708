"""Hermetic data: every test has its own VQBENCH_HOME, and vqbench.families.sources.fetch's download,
verification and caching branches run on a fake source built here (no package index needed)."""
from __future__ import annotations

import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from vqbench.families import sources
from vqbench.families.sources import DataSourceError, Source, fetch, sha256
from vqbench.paths import cache_home

MEMBERS = {"cat.png": b"\x89PNG fake cat", "dog.jpg": b"\xff\xd8 fake dog"}


def test_each_test_has_its_own_empty_home(vqbench_home):
    assert cache_home() == vqbench_home and not any(vqbench_home.iterdir())
    assert not vqbench_home.is_relative_to(Path.home() / ".cache")


def fake_source(kind: str = "wheel") -> Source:
    """MEMBERS, as a source would list them, inside fakephotos 1.0 (a wheel, or an sdist's folder)."""
    prefix = "fakephotos/data/" if kind == "wheel" else "fakephotos-1.0/fakephotos/data/"
    return Source("fake-photos", "fakephotos==1.0", kind, prefix, {k: sha256(v) for k, v in MEMBERS.items()},
                  "a test source")


def build_archive(folder: Path, kind: str, files: dict[str, bytes]) -> Path:
    """A wheel (zip) or sdist (tar.gz) of fakephotos 1.0 holding `files` (paths inside the archive)."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "wheel":
        path = folder / "fakephotos-1.0-py3-none-any.whl"
        meta = {"fakephotos-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: fakephotos\nVersion: 1.0\n",
                "fakephotos-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
                "fakephotos-1.0.dist-info/RECORD": b""}
        with zipfile.ZipFile(path, "w") as z:
            for name, data in {**files, **meta}.items():
                z.writestr(name, data)
    else:
        path = folder / "fakephotos-1.0.tar.gz"
        with tarfile.open(path, "w:gz") as t:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return path


def declare(monkeypatch, src: Source) -> None:
    """`src` joins the sources the families declare, for this test."""
    declared = sources.all_sources
    monkeypatch.setattr(sources, "all_sources", lambda: {**declared(), src.name: src})


class FakeIndex:
    """Stands in for the package index: fetch()'s `pip download` gets a copy of the archive served."""

    def __init__(self, folder: Path, monkeypatch):
        self.folder, self.monkeypatch, self.archive, self.downloads = folder, monkeypatch, None, 0
        monkeypatch.setattr(sources, "_pip_download", self.pip_download)

    def serve(self, src: Source, files: dict[str, bytes]) -> None:
        declare(self.monkeypatch, src)
        self.archive = build_archive(self.folder, src.kind, files)

    def pip_download(self, src: Source, dest: Path, progress: bool = False) -> Path:
        self.downloads += 1
        return Path(shutil.copy(self.archive, dest))


@pytest.fixture
def index(tmp_path, monkeypatch) -> FakeIndex:
    return FakeIndex(tmp_path / "index", monkeypatch)


def empty(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_fetch_extracts_only_the_listed_members_and_downloads_once(index, vqbench_home, kind):
    src = fake_source(kind)
    index.serve(src, {**{src.prefix + k: v for k, v in MEMBERS.items()}, src.prefix + "extra.txt": b"not listed",
                      "fakephotos/__init__.py": b""})
    folder = fetch(src.name)
    assert folder == vqbench_home / "data" / "fake-photos"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == MEMBERS
    assert fetch(src.name) == folder and index.downloads == 1  # cached: no second download
    row = next(r for r in sources.status() if r[0] == "fake-photos")
    assert row[1] is True and row[3] == sum(map(len, MEMBERS.values()))


def test_a_sha_mismatch_fails_in_one_line_and_caches_nothing(index, vqbench_home):
    src = fake_source()
    index.serve(src, {src.prefix + "cat.png": MEMBERS["cat.png"], src.prefix + "dog.jpg": b"tampered dog"})
    with pytest.raises(DataSourceError) as e:
        fetch(src.name)
    assert str(e.value) == (f"data source 'fake-photos': dog.jpg has sha256 {sha256(b'tampered dog')[:16]}..., "
                            f"expected {sha256(MEMBERS['dog.jpg'])[:16]}... Fix: check your package index mirror")
    assert empty(vqbench_home / "data")  # nor a half-written staging folder


def test_a_missing_member_fails_in_one_line_and_caches_nothing(index, vqbench_home):
    src = fake_source()
    index.serve(src, {src.prefix + "cat.png": MEMBERS["cat.png"]})
    with pytest.raises(DataSourceError) as e:
        fetch(src.name)
    assert str(e.value) == ("data source 'fake-photos': fakephotos==1.0 has no fakephotos/data/dog.jpg. Fix: report "
                            "this; the pinned release no longer matches the source table")
    assert empty(vqbench_home / "data")  # nor a half-written staging folder


def test_a_partial_cache_is_fetched_again_whole(index, vqbench_home):
    src = fake_source()
    index.serve(src, {src.prefix + k: v for k, v in MEMBERS.items()})
    src.folder.mkdir(parents=True)
    (src.folder / "cat.png").write_bytes(b"left over from an old layout")
    assert fetch(src.name) == src.folder and index.downloads == 1
    assert {p.name: p.read_bytes() for p in src.folder.iterdir()} == MEMBERS


def test_pip_download_from_a_local_wheel_folder(tmp_path, monkeypatch):
    """The real `pip download` command line, against a find-links folder instead of the index."""
    src = fake_source()
    build_archive(tmp_path / "wheels", "wheel", {src.prefix + k: v for k, v in MEMBERS.items()})
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    declare(monkeypatch, src)
    assert {p.name: p.read_bytes() for p in fetch(src.name).iterdir()} == MEMBERS
    missing = Source("fake-missing", "fakephotos==2.0", "wheel", src.prefix, src.members, "no such release")
    declare(monkeypatch, missing)
    with pytest.raises(DataSourceError, match=r"^data source 'fake-missing': `pip download fakephotos==2\.0` failed "
                                              r"\(.*\)\. Fix: connect to the package index"):
        fetch(missing.name)



def _report_cache_home(emit) -> str:
    from vqbench.paths import cache_home
    return str(cache_home())


def test_a_confined_job_reads_the_callers_cache_not_its_scratch_home(tmp_path, monkeypatch):
    """Without $VQBENCH_HOME the cache is ~/.cache/vqbench; a confined child's $HOME is its private
    scratch, so it must be told where the caller's cache is (else every image job re-downloads,
    and fails, with no network)."""
    from vqbench.sandbox import run_in_child
    monkeypatch.delenv("VQBENCH_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for confined in (False, True):
        outcome = run_in_child(_report_cache_home, (), 60.0, confined=confined)
        assert outcome.failure is None, outcome.failure
        assert outcome.value == str(tmp_path / ".cache" / "vqbench")


def _report_pids(emit) -> dict:
    import os
    return {"pid": os.getpid(), "proc_self": int(os.readlink("/proc/self")),
            "init": open("/proc/1/cmdline", "rb").read().split(b"\0")[0].decode(errors="replace")}


def test_a_confined_job_sees_the_proc_of_its_own_pid_namespace():
    """The CUDA driver finds its process by getpid() under /proc: in the job's PID namespace that is
    2, so the namespace needs its own /proc (under the host's, CUDA failed to start on an H100)."""
    from vqbench.sandbox import confinement_in_force, run_in_child

    if not confinement_in_force().startswith("namespaces"):
        pytest.skip("namespaces are not permitted here")
    outcome = run_in_child(_report_pids, (), 60.0, confined=True)
    assert outcome.failure is None, outcome.failure
    assert outcome.value["pid"] == outcome.value["proc_self"] == 2  # the job is PID 2 under a minimal init
    assert "python" in outcome.value["init"]  # PID 1 is that init (a fork of the job's process), not the host's
