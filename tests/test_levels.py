"""Several instances of the submitted quantizer in one job (task `quantizer.levels`): the task
rules, the VQ-VAE-2-style image model, and a whole job through the three confined stages."""
from __future__ import annotations

import math

import pytest
import torch

from vqbench.families.image.model import TwoLevelDecoder, TwoLevelEncoder
from vqbench.results import read_result, result_path
from vqbench.runner import plan, run
from vqbench.schema import ConfigError
from vqbench.submissions import get_submission
from vqbench.tasks import get_task, list_tasks, load_task_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TWO_LEVEL = """\
family: image
version: 1
tier: lite
description: a tiny two-level model for tests
quantizer: {dim: 4, codebook_size: 64, levels: [16, 64]}
train: {steps: 4, batch_size: 4, lr: 1.0e-3}
data: {source: photos, resolution: 32, eval_short_sides: [128]}
model: {channels: 8, ch_mult: [1, 1, 2], num_res_blocks: 1}
metrics: [psnr, mse]
seeds: [0]
resources: {timeout_s: 600}
"""


def write(root, family: str, name: str, text: str):
    path = root / "tasks" / family / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("quantizer, field, message", [
    ("{dim: 4, codebook_size: 64, levels: [16, 32]}", "levels", "is not codebook_size 64"),
    ("{dim: 4, codebook_size: 64, levels: [64]}", "levels", "two or more sizes"),
    ("{dim: 4, codebook_size: 64, levels: [8, 16, 64]}", "quantizer.levels", "VQ-VAE-2's two"),
])
def test_bad_levels_name_the_field(tmp_path, quantizer, field, message):
    path = write(tmp_path, "image", "bad", TWO_LEVEL.replace("{dim: 4, codebook_size: 64, levels: [16, 64]}", quantizer))
    with pytest.raises(ConfigError, match=message) as e:
        load_task_file(path, tmp_path / "tasks")
    assert field in str(e.value) and str(path) in str(e.value)


def test_the_top_level_grid_must_fit_the_crop(tmp_path):
    """f = 4 at the bottom, 8 at the top: 36 pixels fit the bottom grid only."""
    path = write(tmp_path, "image", "odd", TWO_LEVEL.replace("resolution: 32", "resolution: 36"))
    with pytest.raises(ConfigError, match="data.resolution.*multiple of the model's downsampling factor 8"):
        load_task_file(path, tmp_path / "tasks")
    single = TWO_LEVEL.replace("resolution: 32", "resolution: 36").replace(", levels: [16, 64]", "")
    assert load_task_file(write(tmp_path, "image", "odd", single), tmp_path / "tasks")[0].quantizer.levels is None


def test_a_family_without_a_hierarchical_model_refuses_levels(tmp_path):
    from conftest import TINY_TASK
    path = write(tmp_path, "synthetic", "leveled", TINY_TASK.replace("codebook_size: 16}", "codebook_size: 16, "
                                                                     "levels: [4, 16]}"))
    with pytest.raises(ConfigError, match="quantizer.levels.*synthetic family's models quantize one level"):
        load_task_file(path, tmp_path / "tasks")


def test_single_level_tasks_hash_without_levels():
    """`levels` entered the task spec after results existed: a task without it hashes as before."""
    for task in list_tasks("*"):
        assert ("levels" in task.spec()["quantizer"]) == (task.quantizer.levels is not None)
    two = get_task("image/two-level")
    assert two.quantizer.level_sizes == [256, 1024] and two.spec()["quantizer"]["levels"] == [256, 1024]
    assert get_task("image/lite@codebook_size=4096").quantizer.level_sizes == [4096]


def test_the_bottom_is_conditioned_on_the_quantized_top():
    torch.manual_seed(0)
    enc, dec = TwoLevelEncoder(4, 8, [1, 1, 2], 1), TwoLevelDecoder(4, 8, [1, 1, 2], 1)
    x = torch.randn(2, 3, 32, 32)
    seen = {}

    def keep(level, z):
        seen[level] = z
        return z

    def zero_top(level, z):
        return torch.zeros_like(z) if level == 0 else z

    latents = enc(x, keep)
    assert [z.shape for z in latents] == [(2, 16, 4), (2, 64, 4)] and enc.factor == 8
    other = enc(x, zero_top)
    assert torch.equal(other[0], latents[0]) and not torch.allclose(other[1], latents[1])
    assert dec([seen[0], seen[1]]).shape == x.shape


@pytest.mark.network
def test_a_two_level_job_through_the_confined_stages(project):
    write(project, "image", "tiny-two-level", TWO_LEVEL)
    results = project / "results"
    jobs, _ = plan([get_submission("minimal")], [get_task("image/tiny-two-level")], [0], results, False)
    assert not run(jobs, project, results, "serial", show_progress=False).failed
    result = read_result(result_path(results, "minimal", "image/tiny-two-level", 0))
    assert result["status"] == "ok", result["error"]
    levels = result["levels"]
    assert [(lv["k"], lv["tokens_per_item"]) for lv in levels] == [(16, 16), (64, 64)]
    # 16 tokens x 4 bits + 64 x 6 = 448 bits per image, over the finest grid's 64 tokens
    assert result["bits_per_token"] == pytest.approx((16 * 4 + 64 * 6) / 64)
    used = [round(lv["utilization"] * lv["k"]) for lv in levels]
    metrics = result["metrics"]
    assert metrics["utilization"] == pytest.approx(sum(used) / 80) and metrics["dead_codes"] == 80 - sum(used)
    assert all(lv["dead_codes"] == lv["k"] - u for lv, u in zip(levels, used))
    assert metrics["emitted_codes"] == 80 and all(0 < u for u in used)
    assert math.isfinite(metrics["psnr"]) and metrics["mse"] > 0
    curve = result["train"]["usage_curve"]
    assert curve and all(0 < row[1] <= 1 for row in curve)
    # the leaderboard shows each level's usage beside the task's table, from the result's `levels`
    from vqbench.leaderboard import check_leaderboard, write_leaderboard
    out = project / "leaderboard"
    write_leaderboard(results, out)
    assert check_leaderboard(results, out) == []
    page = (out / "README.md").read_text()
    assert "Code usage per level" in page and "level 0 (K = 16) utilization" in page
    assert f"{levels[0]['utilization']:.1%}" in page and f"{levels[1]['utilization']:.1%}" in page
    html = (out / "site" / "tasks" / "image_tiny-two-level.html").read_text()
    assert "K per level = 16 + 64" in html and f"{levels[1]['perplexity_ratio']:.1%}" in html


def test_validate_checks_the_contract_at_every_levels_k(project):
    from vqbench.validate import validate
    write(project, "image", "tiny-two-level", TWO_LEVEL)
    checks = validate("minimal", project, task_id="image/tiny-two-level")
    contract = [c.name for c in checks if c.name.startswith("contract: ")]
    assert {n.rsplit(" (K = ", 1)[1] for n in contract} == {"16)", "64)"}
    assert len(contract) == 2 * len({n.rsplit(" (K = ", 1)[0] for n in contract})
    assert all(c.ok for c in checks), [(c.name, c.detail) for c in checks if not c.ok]
