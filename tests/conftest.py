"""Shared fixtures: a throwaway project (tasks/, submissions/, results/) with a tiny task."""
from __future__ import annotations

import shutil
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


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project root with one tiny task and the fixture submissions; caches go to tmp too."""
    root = tmp_path / "project"
    (root / "tasks" / "synthetic").mkdir(parents=True)
    (root / "tasks" / "synthetic" / "tiny.yaml").write_text(TINY_TASK)
    shutil.copytree(FIXTURES / "submissions", root / "submissions")
    monkeypatch.setenv("VQBENCH_ROOT", str(root))
    monkeypatch.setenv("VQBENCH_HOME", str(tmp_path / "home"))
    return root


def add_task(root: Path, name: str, text: str) -> Path:
    path = root / "tasks" / "synthetic" / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread, as the runner pins per job: two threads collapse when the other core is busy."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
