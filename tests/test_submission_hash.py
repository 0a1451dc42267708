"""The submission hash covers every file that can change behaviour (dotfiles included) and no cache."""
from __future__ import annotations

import shutil

import pytest

from vqbench.submissions import folder_hash, get_submission, list_submissions

from conftest import FIXTURES, REPO


@pytest.fixture
def folder(tmp_path):
    dest = tmp_path / "minimal"
    shutil.copytree(FIXTURES / "submissions" / "minimal", dest)
    return dest


@pytest.mark.parametrize("path", [".helper.py", ".weights.pt", ".config/params.yaml", "data/.cache_of_codes.npy"])
def test_hidden_files_change_the_hash(folder, path):
    """A hidden helper module or weights file can change what the quantizer does: results must go stale."""
    before = folder_hash(folder)
    (folder / path).parent.mkdir(parents=True, exist_ok=True)
    (folder / path).write_bytes(b"import torch\n")
    with_file = folder_hash(folder)
    assert with_file != before
    (folder / path).write_bytes(b"import numpy\n")
    assert folder_hash(folder) not in (before, with_file)


@pytest.mark.parametrize("path", ["__pycache__/quantizer.cpython-311.pyc", "helpers/__pycache__/x.pyc", "stray.pyc",
                                  ".pytest_cache/v/cache/lastfailed", ".ipynb_checkpoints/quantizer-checkpoint.py",
                                  "notes/.ipynb_checkpoints/a.ipynb"])
def test_caches_do_not_change_the_hash(folder, path):
    before = folder_hash(folder)
    (folder / path).parent.mkdir(parents=True, exist_ok=True)
    (folder / path).write_bytes(b"junk")
    assert folder_hash(folder) == before


def test_renaming_a_file_changes_the_hash(folder):
    """The path is hashed with the content: moving code between modules is a change too."""
    before = folder_hash(folder)
    (folder / "quantizer.py").rename(folder / "quantizer2.py")
    assert folder_hash(folder) != before


def test_no_registered_submission_has_a_file_the_old_hash_skipped():
    """The dotfile fix must not make committed results stale: the old hash skipped only names
    starting with '.', and no registered submission has one (caches aside)."""
    for name in list_submissions(root=REPO):
        sub = get_submission(name, REPO)
        hidden = [p for p in sub.folder.rglob(".*") if not any(part in ("__pycache__", ".pytest_cache",
                                                                         ".ipynb_checkpoints") for part in p.parts)]
        assert hidden == [], f"{name}: {hidden} would change its hash (and stale its committed results)"


def test_an_adapter_shipped_with_the_harness_is_hashed_with_the_submission(tmp_path, monkeypatch):
    """ext_* submissions run vqbench.adapters, outside their folder: editing it must stale their results,
    while a submission whose entrypoint is in its own folder keeps its folder hash."""
    from vqbench import submissions

    ext = get_submission("ext_vqpytorch_fsq", REPO)
    assert ext.harness_entrypoint_file() == REPO / "vqbench" / "adapters.py"
    own = get_submission("vq", REPO)
    assert own.harness_entrypoint_file() is None and own.hash == folder_hash(own.folder)

    adapter = tmp_path / "adapters.py"
    real_find_spec = submissions.importlib.util.find_spec
    monkeypatch.setattr(submissions.importlib.util, "find_spec", lambda name: (
        real_find_spec(name).__class__(name, None, origin=str(adapter)) if name == "vqbench.adapters" else real_find_spec(name)))
    hashes = []
    for source in (b"A = 1\n", b"A = 2\n"):
        adapter.write_bytes(source)
        hashes.append(get_submission("ext_vqpytorch_fsq", REPO).hash)
    assert hashes[0] != hashes[1] and folder_hash(ext.folder) not in hashes
