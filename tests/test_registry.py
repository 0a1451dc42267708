"""The task registry: every registered task loads, sweeps expand, and every error names file, field and fix."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY_TASK, add_task
from vqbench.schema import ConfigError
from vqbench.tasks import get_task, list_tasks, load_registry


@pytest.mark.parametrize("task", list_tasks(), ids=lambda t: t.id)
def test_every_registered_task_is_valid(task):
    assert task.version >= 1 and task.tier in ("lite", "full")
    assert task.metrics and len(task.hash) == 16
    assert task.quantizer.codebook_size >= 2


def test_lite_synthetic_probes_exist():
    ids = {t.base_id for t in list_tasks("synthetic/*", tier="lite")}
    assert {"synthetic/init-mismatch", "synthetic/encoder-capacity", "synthetic/codebook-scaling",
            "synthetic/code-dim"} <= ids
    sizes = sorted(t.quantizer.codebook_size for t in list_tasks("synthetic/codebook-scaling*", tier="lite"))
    assert sizes[0] == 2 ** 8 and sizes[-1] == 2 ** 14


def test_sweep_expands_into_ids(project):
    add_task(project, "grid", TINY_TASK + "sweep:\n  quantizer.codebook_size: [16, 64]\n  train.lr: [0.001, 0.01]\n")
    ids = [t.id for t in list_tasks("synthetic/grid*")]
    assert ids == ["synthetic/grid@codebook_size=16,lr=0.001", "synthetic/grid@codebook_size=16,lr=0.01",
                   "synthetic/grid@codebook_size=64,lr=0.001", "synthetic/grid@codebook_size=64,lr=0.01"]
    task = get_task("synthetic/grid@codebook_size=64,lr=0.01")
    assert task.quantizer.codebook_size == 64 and task.train.lr == 0.01
    assert len({t.hash for t in list_tasks("synthetic/grid*")}) == 4
    assert [t.id for t in list_tasks("synthetic/grid")] == ids  # a base id selects all its points
    assert [t.id for t in list_tasks(["synthetic/grid@codebook_size=16,*", "synthetic/tiny"])] == \
        ["synthetic/grid@codebook_size=16,lr=0.001", "synthetic/grid@codebook_size=16,lr=0.01", "synthetic/tiny"]


def test_hash_covers_the_spec_and_is_stable(project):
    before = get_task("synthetic/tiny").hash
    assert get_task("synthetic/tiny").hash == before
    add_task(project, "tiny", TINY_TASK.replace("steps: 30", "steps: 31"))
    assert get_task("synthetic/tiny").hash != before


@pytest.mark.parametrize("edit, field, words", [
    (lambda t: t.replace("tier: lite", "tier: lite\nbudget: 3"), "budget", ["unknown key"]),
    (lambda t: t.replace("train: {", "trian: {"), "trian", ["did you mean 'train'"]),
    (lambda t: t.replace("steps: 30", "stesp: 30"), "train.stesp", ["did you mean 'steps'"]),
    (lambda t: t.replace("steps: 30", "steps: many"), "train.steps", ["expected int"]),
    (lambda t: t.replace("tier: lite", "tier: huge"), "tier", ["'lite'", "'full'"]),
    (lambda t: t.replace("family: synthetic", "family: synthtic"), "family", ["did you mean 'synthetic'"]),
    (lambda t: t.replace("version: 1\n", ""), "version", ["missing required key"]),
    (lambda t: t + "metrics: [mse, rfid]\n", "metrics[1]", ["unknown metric 'rfid'", "distortion_ratio"]),
    (lambda t: t.replace("kind: gaussian_mixture", "kind: spiral"), "data.kind", ["'manifold'"]),
    (lambda t: t.replace("width: 16", "widht: 16"), "model.widht", ["did you mean 'width'"]),
    (lambda t: t.replace("{dim: 4,", "{dim: 0,"), "quantizer.dim", ["not positive"]),
    (lambda t: t.replace("encoder: mlp", "encoder: identity").replace("{dim: 4,", "{dim: 8,"), "quantizer.dim", ["identity encoder"]),
    (lambda t: t + "sweep:\n  seeds: [1, 2]\n", "sweep.seeds", ["can only sweep"]),
    (lambda t: t + "sweep:\n  train.lr: []\n", "sweep.train.lr", ["empty list"]),
    (lambda t: t + "sweep:\n  train.lr: [fast]\n", "train.lr", ["expected float"]),
    (lambda t: "family: [unclosed\n", "<file>", ["not valid YAML"]),
])
def test_registry_errors_name_file_field_and_fix(project, edit, field, words):
    path = add_task(project, "broken", edit(TINY_TASK))
    with pytest.raises(ConfigError) as info:
        load_registry()
    err = info.value
    assert err.path == path and err.field == field, str(err)
    assert all(w in str(err) for w in words), str(err)
    assert str(path) in str(err) and f"field '{field}'" in str(err)


def test_family_folder_mismatch_and_duplicates(project):
    (project / "tasks" / "image").mkdir()
    (project / "tasks" / "image" / "x.yaml").write_text(TINY_TASK)
    with pytest.raises(ConfigError, match="lives in tasks/image/"):
        load_registry()


def test_unknown_task_id_suggests(project):
    with pytest.raises(ConfigError, match="did you mean 'synthetic/tiny'"):
        get_task("synthetic/tyni")


def test_the_metrics_doc_is_what_the_specs_give(capsys):
    """docs/metrics.md is generated from the registered MetricSpecs: one source of truth."""
    from vqbench.cli import main
    assert main(["metrics", "--markdown"]) == 0
    table = capsys.readouterr().out
    doc = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()
    assert doc.endswith(table), "regenerate docs/metrics.md with `vqbench metrics --markdown`"


def test_a_method_that_needs_an_encoder_is_not_run_or_ranked_without_one(tmp_path):
    """rotation_vq only changes the encoder's gradient: on identity-encoder probes it is plain VQ, so
    those pairs are n/a (not planned, shown as such), never a tie ranked beside vq."""
    from vqbench.runner import plan
    from vqbench.submissions import get_submission
    from vqbench.tasks import not_applicable
    rotation, vq = get_submission("rotation_vq"), get_submission("vq")
    identity = get_task("synthetic/init-mismatch@shift=4.0")
    mlp = get_task("synthetic/encoder-capacity@width=4,depth=1")
    assert "trainable_encoder" in not_applicable(rotation, identity)
    assert not_applicable(rotation, mlp) is None and not_applicable(vq, identity) is None
    jobs, _ = plan([rotation, vq], [identity, mlp], [0], tmp_path, force=False)
    assert sorted((j.submission.name, j.task.id) for j in jobs) == sorted(
        [("rotation_vq", mlp.id), ("vq", identity.id), ("vq", mlp.id)])


def test_an_unknown_need_names_the_field_and_the_choices(tmp_path):
    from vqbench.submissions import SubmissionMeta
    meta = SubmissionMeta(name="x", display_name="x", entrypoint="q:X", needs=["gpu_magic"])
    with pytest.raises(ConfigError, match="needs.*trainable_encoder"):
        meta.validate()
