"""A family is one folder: a toy family copied into a temporary folder runs end to end with no edit
to vqbench, and variable-length items reach the quantizer and the metrics without padding."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vqbench.families as families
from vqbench import metrics as metrics_module
from vqbench.families import Batch, batches_by_length
from vqbench.schema import ConfigError
from vqbench.tasks import load_registry

FIXTURES = Path(__file__).parent / "fixtures"

TOY_TASK = """\
family: toy
version: 1
tier: lite
description: variable-length toy items
quantizer: {dim: 4, codebook_size: 32}
train: {steps: 20, batch_size: 8}
seeds: [0]
resources: {timeout_s: 120}
"""


@pytest.fixture
def clean_registry():
    """Families and metrics registered inside a test are forgotten after it."""
    saved = (dict(families._FAMILIES), set(families._imported), list(families.__path__),
             dict(metrics_module.METRICS), set(sys.modules))
    yield
    families._FAMILIES.clear(), families._FAMILIES.update(saved[0])
    families._imported.clear(), families._imported.update(saved[1])
    families.__path__[:] = saved[2]
    metrics_module.METRICS.clear(), metrics_module.METRICS.update(saved[3])
    for name in set(sys.modules) - saved[4]:
        del sys.modules[name]


@pytest.fixture
def toy_project(project, tmp_path, monkeypatch, clean_registry):
    """The test project plus the toy family in a folder outside the package, and a task of it."""
    outside = tmp_path / "more_families"
    shutil.copytree(FIXTURES / "families" / "toy", outside / "toy")
    monkeypatch.setenv(families.FAMILY_PATH_ENV, str(outside))
    (project / "tasks" / "toy").mkdir()
    (project / "tasks" / "toy" / "variable.yaml").write_text(TOY_TASK)
    return project


def run_cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "vqbench.cli", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("executor", ["serial", "ray"])
def test_toy_family_from_a_folder_runs_end_to_end(toy_project, executor):
    proc = run_cli(toy_project, "run", "--submission", "minimal", "--tasks", "toy/*", "--executor", executor,
                   "--workers", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((toy_project / "results" / "minimal" / "toy" / "variable" / "seed-0.json").read_text())
    assert result["status"] == "ok", result["error"]
    m = result["metrics"]
    # Every quantized token is a real one: 5 + 7 + 9 + 9 + 12 + 5, no padding, no item twice.
    assert m["toy_tokens"] == 47
    assert 0 < m["toy_item_utilization"] <= 12 / 32 and 0 < m["utilization"] <= 1 and m["mse"] > 0


@pytest.mark.parametrize("executor", ["serial", "ray"])
def test_a_two_level_model_runs_every_level_through_the_stages(toy_project, executor):
    """quantizer.levels: one instance of the submission per level, each held to its own K; no data to fetch."""
    task = toy_project / "tasks" / "toy" / "variable.yaml"
    task.write_text(TOY_TASK.replace("codebook_size: 32}", "codebook_size: 32, levels: [8, 32]}"))
    proc = run_cli(toy_project, "run", "--submission", "minimal", "--tasks", "toy/*", "--executor", executor,
                   "--workers", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((toy_project / "results" / "minimal" / "toy" / "variable" / "seed-0.json").read_text())
    assert result["status"] == "ok", result["error"]
    levels, m = result["levels"], result["metrics"]
    assert [(lv["k"], lv["codebook_size"], lv["bits_per_token"]) for lv in levels] == [(8, 8, 3.0), (32, 32, 5.0)]
    assert result["bits_per_token"] == 8.0  # both levels tokenize every position: 3 + 5 bits
    used = [round(lv["utilization"] * lv["k"]) for lv in levels]
    assert 0 < used[0] <= 8 and 0 < used[1] <= 32 and m["utilization"] == pytest.approx(sum(used) / 40)
    assert m["toy_tokens"] == 47 and m["emitted_codes"] == 40  # eval metrics see the last level's codes
    assert all(k.startswith(("level0/", "level1/")) for _, log in result["train"]["quantizer_log"] for k in log)


def test_a_family_prepare_error_fails_the_job_with_its_message(toy_project):
    task = toy_project / "tasks" / "toy" / "variable.yaml"
    task.write_text(TOY_TASK + "data: {prepared_ok: false}\n")
    proc = run_cli(toy_project, "run", "--submission", "minimal", "--tasks", "toy/*", "--executor", "serial",
                   "--quiet")
    assert proc.returncode == 1, proc.stderr[-3000:]
    result = json.loads((toy_project / "results" / "minimal" / "toy" / "variable" / "seed-0.json").read_text())
    assert result["status"] == "failed"
    assert result["error"]["type"] == "DataError" and "data.prepared_ok" in result["error"]["reason"]


def test_toy_family_is_listed_with_its_metrics(toy_project):
    assert "toy" in families.list_families()
    registry = load_registry(toy_project)
    assert registry["toy/variable"].metrics == ("mse", "toy_tokens", "toy_item_utilization")
    assert metrics_module.METRICS["toy_tokens"].inputs == "eval"
    proc = run_cli(toy_project, "metrics")
    assert proc.returncode == 0 and "toy_item_utilization" in proc.stdout


def test_a_family_that_fails_to_import_is_a_clear_error(project, tmp_path, monkeypatch, clean_registry):
    broken = tmp_path / "broken_families" / "brokenfam"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("import no_such_package_anywhere\n")
    monkeypatch.setenv(families.FAMILY_PATH_ENV, str(broken.parent))
    with pytest.raises(ConfigError) as e:
        families.list_families()
    msg = str(e.value)
    assert str(broken / "__init__.py") in msg and "'brokenfam' family failed to import" in msg
    assert "No module named 'no_such_package_anywhere'" in msg and "Fix:" in msg


def test_an_outside_family_cannot_shadow_a_builtin(project, tmp_path, monkeypatch, clean_registry):
    (tmp_path / "shadow" / "image").mkdir(parents=True)
    (tmp_path / "shadow" / "image" / "__init__.py").write_text("")
    monkeypatch.setenv(families.FAMILY_PATH_ENV, str(tmp_path / "shadow"))
    with pytest.raises(ConfigError, match="a family named 'image' already lives in"):
        families.list_families()


def test_unknown_family_in_a_task_names_the_file_and_the_fix(project):
    path = project / "tasks" / "synthetic" / "tiny.yaml"
    path.write_text(path.read_text().replace("family: synthetic", "family: synthetc"))
    with pytest.raises(ConfigError) as e:
        load_registry(project)
    assert str(path) in str(e.value) and "did you mean 'synthetic'?" in str(e.value)


def test_batches_by_length_never_pads():
    items = [(f"i{n}", torch.full((n, 2), float(n))) for n in (3, 5, 3, 3, 5, 8)]
    batches = batches_by_length(items, max_tokens=7, side=lambda item_id: {"label": torch.tensor(int(item_id[1:]))})
    assert [(b.x.shape[:2], b.ids) for b in batches] == [
        ((2, 3), ["i3", "i3"]), ((1, 3), ["i3"]), ((1, 5), ["i5"]), ((1, 5), ["i5"]), ((1, 8), ["i8"])]
    assert all(isinstance(b, Batch) and torch.equal(b.side["label"], torch.full((len(b.ids),), b.x.shape[1]))
               for b in batches)
    assert sum(b.x.shape[0] * b.x.shape[1] for b in batches) == 3 + 5 + 3 + 3 + 5 + 8


def test_data_flag_sets_each_family_folder_and_is_forwarded(project, tmp_path, monkeypatch, capsys):
    from vqbench.cli import _data_folders
    from vqbench.runner import worker_env
    assert _data_folders([f"image={tmp_path}"], None) == {"image": tmp_path.resolve()}
    assert _data_folders([], str(tmp_path)) == {"image": tmp_path.resolve()}  # the deprecated flag
    assert "--data-root is deprecated; use --data image=" in capsys.readouterr().err
    for bad, words in [("image", "not FAMILY=PATH"), ("imgae=/x", "not FAMILY=PATH"),
                       ("synthetic=/x", "reads no data folder")]:
        with pytest.raises(ConfigError, match=words):
            _data_folders([bad], None)
    monkeypatch.setenv(families.data_root_env("image"), str(tmp_path))
    monkeypatch.setenv("VQBENCH_ANYTHING_NEW", "1")
    env = worker_env()
    assert env["VQBENCH_DATA_IMAGE"] == str(tmp_path) and env["VQBENCH_ANYTHING_NEW"] == "1"
    assert env["OMP_NUM_THREADS"] == "1" and not any(k.startswith("PATH") for k in env)
