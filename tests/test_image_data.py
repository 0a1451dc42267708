"""Image data: downloadable sources, the photo-level split, lite crops and the ImageFolder tier."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from vqbench.families import DataRootError, data_root_env
from vqbench.families import sources
from vqbench.families.image import data as images
from vqbench.families.image.data import ( ImageFolder, LitePhotos, endless_loader, image_files,
                                 lite_photo_paths, resolve_root, split_by_photo)
from vqbench.families import get_family
from vqbench.tasks import get_task


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_folder(root, split, sizes):
    """root/split/<class>/img_i.png with a left-red / right-blue pattern, various sizes."""
    for i, (w, h) in enumerate(sizes):
        arr = np.zeros((h, w, 3), np.uint8)
        arr[:, : w // 2, 0] = 255
        arr[:, w // 2:, 2] = 255
        folder = root / split / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(folder / f"img_{i}.png")


@pytest.mark.network
def test_sources_fetch_verified_and_listed():
    folder = sources.fetch("sklearn-photos")
    for member, digest in sources.all_sources()["sklearn-photos"].members.items():
        assert sources.sha256((folder / member).read_bytes()) == digest
    rows = {name: (cached, size) for name, cached, _, size in sources.status()}
    assert set(rows) == set(sources.all_sources())
    assert rows["sklearn-photos"][0] and rows["sklearn-photos"][1] > 300_000


def test_offline_fetch_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("VQBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")  # no extra indexes or wheel folders
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip behaves as if offline
    with pytest.raises(sources.DataSourceError) as e:
        sources.fetch("sklearn-photos")
    msg = str(e.value)
    assert "\n" not in msg and "sklearn-photos" in msg and "vqbench data fetch sklearn-photos" in msg
    assert not (tmp_path / "data" / "sklearn-photos").exists()


@pytest.mark.network
def test_photo_split_is_by_photo_deterministic_and_keeps_scenes_together():
    keys = [k for k, _ in lite_photo_paths()]
    assert len(keys) == 29
    train, held = split_by_photo(keys, 0.2, seed=0)
    assert not set(train) & set(held) and set(train) | set(held) == set(keys)
    assert 5 <= len(held) <= 7  # ~20% of 29
    assert split_by_photo(keys, 0.2, seed=0) == (train, held)
    assert split_by_photo(keys, 0.2, seed=1) != (train, held)
    stereo = [k for k in keys if "motorcycle" in k]
    assert all(k in held for k in stereo) or all(k in train for k in stereo)


@pytest.mark.network
def test_lite_photos_crops():
    lite = LitePhotos(64, [128, 192], [128, 256], 0.2, 0)
    assert lite.eval_set.dtype == torch.uint8 and lite.eval_set.shape[1:] == (3, 64, 64)
    assert len(lite.eval_set) >= 100
    assert lite.content_key() == LitePhotos(64, [128], [128, 256], 0.2, 0).content_key()  # train scales don't matter
    a = lite.train.sample(4, torch.Generator().manual_seed(3))
    b = lite.train.sample(4, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (4, 3, 64, 64) and a.min() >= -1 and a.max() <= 1


def test_image_folder_loader(tmp_path):
    make_folder(tmp_path, "train", [(40, 30), (50, 64), (33, 33), (80, 40)])
    make_folder(tmp_path, "val", [(64, 32), (32, 64)])
    files = image_files(tmp_path, "val")
    assert [f.name for f in files] == ["img_0.png", "img_1.png"]
    ev = ImageFolder(files, 16, train=False)
    x = ev[0]  # 64x32 -> 32x16, centre crop 16x16: left half red, right half blue
    assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert x[0, :, :4].mean() > 0.9 and x[2, :, -4:].mean() > 0.9
    train = ImageFolder(image_files(tmp_path, "train"), 16, train=True)
    s1, s2 = endless_loader(train, 2, seed=5, num_workers=0), endless_loader(train, 2, seed=5, num_workers=0)
    for _ in range(3):  # several epochs, identical for identical seeds
        assert torch.equal(next(s1), next(s2))
    other = endless_loader(train, 2, seed=6, num_workers=0)
    assert any(not torch.equal(next(s1), next(other)) for _ in range(3))


def test_full_tier_missing_root_is_a_clear_error(tmp_path, monkeypatch):
    task = get_task("image/imagenet128@codebook_size=1024")
    missing = tmp_path / "no-imagenet"
    monkeypatch.setenv(data_root_env("image"), str(missing))
    with pytest.raises(DataRootError) as e:
        get_family("image").build(task, 0, torch.device("cpu"))
    msg = str(e.value)
    assert str(missing / "train") in msg and "data.root" in msg and "--data image=" in msg and "imagenet128" in msg
    monkeypatch.delenv(data_root_env("image"))
    with pytest.raises(DataRootError, match="no data folder given"):
        resolve_root(None)


@pytest.mark.network
def test_full_tier_builds_from_a_folder(tmp_path, monkeypatch):
    make_folder(tmp_path, "train", [(140, 130)] * 4)
    make_folder(tmp_path, "val", [(128, 150)] * 3)
    monkeypatch.setenv(images.LEGACY_ROOT_ENV, str(tmp_path))  # the older variable still works
    task = get_task("image/imagenet128@codebook_size=1024")
    task = dataclasses.replace(task, train=dataclasses.replace(task.train, batch_size=2),
                               data=dataclasses.replace(task.data, num_workers=0), metrics=("psnr",))
    setup = get_family("image").build(task, 0, torch.device("cpu"))
    assert next(setup.train_batches).shape == (2, 3, 128, 128)
    assert [b.shape[0] for b in setup.eval_batches()] == [3]


def run_cli(argv):
    from vqbench.cli import main
    return main(argv)


def test_data_cli_lists_and_fails_offline_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VQBENCH_HOME", str(tmp_path))
    assert run_cli(["data", "list"]) == 0
    out = capsys.readouterr().out
    total = len(sources.all_sources())  # every family's sources, none cached in an empty home
    assert "missing" in out and "vqbench data fetch fid-inception" in out and f"0 of {total} sources cached" in out
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    # an unknown name is a usage error (exit 2, as in every command), before anything is fetched
    assert run_cli(["data", "fetch", "lpips-alexnet", "no-such-source"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "no data source 'no-such-source'" in captured.err
    # a known source that cannot be fetched (offline): exit 1 with one error line naming it
    assert run_cli(["data", "fetch", "lpips-alexnet"]) == 1
    errors = [line for line in capsys.readouterr().out.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "lpips-alexnet" in errors[0]
