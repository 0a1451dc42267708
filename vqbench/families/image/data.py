"""Image sets for the image family. Every tensor here is float32 NCHW with values in [-1, 1].

lite: the ~29 photos of the `imagenet-photos`, `skimage-photos` and `sklearn-photos` sources,
  split BY PHOTO into train and eval (no photo contributes to both), so eval measures
  generalisation to unseen images, not memorised crops. Training draws random square crops
  from each photo rescaled to one of several short sides (scale augmentation) plus horizontal
  flips; eval is a fixed grid of non-overlapping crops at a few fixed scales.
full: a folder of images (ImageNet layout root/train/..., root/val/..., any depth of class
  folders), resized so the short side is the resolution and centre-cropped (random crop + flip
  for training), as in SimVQ/taming's ImageNet-128 protocol.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vqbench.families import DataRootError, resolve_data_root
from vqbench.families.image.sources import LITE_PHOTOS
from vqbench.families.sources import fetch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
LEGACY_ROOT_ENV = "VQBENCH_IMAGENET"  # older name of $VQBENCH_DATA_IMAGE (`--data image=PATH`), still read


def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], clamped (what metrics and saved images see)."""
    return ((x + 1) / 2).clamp(0, 1)


def to_uint8(x: Tensor) -> Tensor:
    return (to_unit(x) * 255).round().to(torch.uint8)


def load_rgb(path: Path) -> Tensor:
    """uint8 (3, H, W); greyscale and RGBA files are converted to RGB."""
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)


def lite_photo_paths() -> list[tuple[str, Path]]:
    """(key, path) of every bundled photo, key = '<source>/<file>', sorted by key."""
    out = []
    for source in LITE_PHOTOS:
        folder = fetch(source)
        out += [(f"{source.name}/{p.name}", p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(out)


def scene(key: str) -> str:
    """Photos of one scene share a split: skimage's motorcycle_left/right are a stereo pair."""
    return re.sub(r"_(left|right)(\.\w+)$", r"\2", key)


def split_by_photo(keys: Sequence[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic photo-level split: order scenes by a seeded hash of their name and hold out
    the first ones until round(eval_fraction * n) (at least one) photos are eval. Adding a photo
    never moves the others."""
    scenes = sorted({scene(k) for k in keys}, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    target, held = max(1, round(eval_fraction * len(keys))), set()
    for s in scenes:
        if sum(scene(k) in held for k in keys) >= target:
            break
        held.add(s)
    return [k for k in keys if scene(k) not in held], [k for k in keys if scene(k) in held]


def resize_short_side(img: Tensor, short: int) -> Tensor:
    """uint8 (3, H, W) -> uint8 with min(H, W) == short, antialiased bicubic (PIL)."""
    h, w = img.shape[1:]
    scale = short / min(h, w)
    size = (max(short, round(w * scale)), max(short, round(h * scale)))
    pil = Image.fromarray(img.permute(1, 2, 0).numpy()).resize(size, Image.BICUBIC)
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)


def grid_crops(img: Tensor, size: int) -> Tensor:
    """All non-overlapping size x size crops of a centred grid: (n, 3, size, size) uint8."""
    h, w = img.shape[1:]
    rows, cols = h // size, w // size
    top, left = (h - rows * size) // 2, (w - cols * size) // 2
    crops = [img[:, top + r * size: top + (r + 1) * size, left + c * size: left + (c + 1) * size]
             for r in range(rows) for c in range(cols)]
    return torch.stack(crops)


def uint8_to_float(x: Tensor) -> Tensor:
    return x.float() / 127.5 - 1


class PhotoCrops:
    """Random crops of fixed photos at several scales. `sample(n, gen)` -> (n, 3, size, size) in [-1, 1].

    Each photo is resized once to every short side in `short_sides` (scale augmentation); a
    sample picks a (photo, scale) pair uniformly, a uniform crop position and a coin-flip mirror.
    Pre-resizing keeps a sample to a slice: on one CPU thread data must cost far less than a step.
    """

    def __init__(self, photos: list[Tensor], size: int, short_sides: Sequence[int]):
        self.size = size
        self.scaled = [resize_short_side(p, s) for p in photos for s in short_sides]

    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        out = torch.empty(n, 3, self.size, self.size, dtype=torch.uint8)
        for i in range(n):
            img = self.scaled[int(torch.randint(len(self.scaled), (1,), generator=gen))]
            h, w = img.shape[1:]
            top = int(torch.randint(h - self.size + 1, (1,), generator=gen))
            left = int(torch.randint(w - self.size + 1, (1,), generator=gen))
            crop = img[:, top:top + self.size, left:left + self.size]
            out[i] = crop.flip(-1) if torch.rand((), generator=gen) < 0.5 else crop
        return uint8_to_float(out)


class LitePhotos:
    """The bundled photo set: `train` (PhotoCrops) and `eval_set` (fixed crops, uint8 on CPU)."""

    def __init__(self, size: int, train_short_sides: Sequence[int], eval_short_sides: Sequence[int],
                 eval_fraction: float, split_seed: int):
        paths = dict(lite_photo_paths())
        self.train_keys, self.eval_keys = split_by_photo(list(paths), eval_fraction, split_seed)
        self.train = PhotoCrops([load_rgb(paths[k]) for k in self.train_keys], size, train_short_sides)
        crops = [grid_crops(resize_short_side(load_rgb(paths[k]), s), size)
                 for k in self.eval_keys for s in eval_short_sides]
        self.eval_set = torch.cat(crops)  # uint8, fixed order: photo, scale, row, column

    def content_key(self) -> str:
        """Hash of the eval pixels: names cached reference statistics (FID) of this exact set."""
        return hashlib.sha256(self.eval_set.numpy().tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------- full tier: a folder of images

def resolve_root(root: str | None, task_path: Path | str | None = None) -> Path:
    """`--data image=PATH` ($VQBENCH_DATA_IMAGE, or the older $VQBENCH_IMAGENET) wins over data.root."""
    return resolve_data_root("image", root, task_path, "download ImageNet (ILSVRC2012, https://image-net.org) as "
                             "<root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG", LEGACY_ROOT_ENV)


def image_files(root: Path, split: str, task_path: Path | str | None = None) -> list[Path]:
    folder = root / split
    where = f"{task_path}: " if task_path else ""
    if not folder.is_dir():
        raise DataRootError(
            f"{where}field 'data.root': {folder} does not exist. Fix: point `--data image=<root>` or "
            f"data.root at a folder holding {split}/ (ImageNet: <root>/{split}/<class>/*.JPEG, from "
            f"https://image-net.org)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataRootError(f"{where}field 'data.root': {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}). "
                            "Fix: point it at the extracted image folders")
    return files


def listing_key(files: Sequence[Path], root: Path, *extra) -> str:
    """Hash of relative paths and sizes (reading 50k files just to name a cache is too slow)."""
    h = hashlib.sha256(repr(extra).encode())
    for p in files:
        h.update(f"{p.relative_to(root)}:{p.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


class ImageFolder(torch.utils.data.Dataset):
    """Every image under a folder (any depth), short side resized to `size` then cropped square:
    centre crop for eval, random crop + horizontal flip for training. Items are [-1, 1] floats.
    Training items are indexed by (index, crop seed) pairs from SeededSampler, so crops depend on
    the run's seed only, not on worker processes or torch's global RNG."""

    def __init__(self, files: Sequence[Path], size: int, train: bool):
        self.files, self.size, self.train = list(files), size, train

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: int | tuple[int, int]) -> Tensor:
        i, crop_seed = item if isinstance(item, tuple) else (item, None)
        img = resize_short_side(load_rgb(self.files[i]), self.size)
        h, w = img.shape[1:]
        if self.train:
            gen = torch.Generator().manual_seed(crop_seed if crop_seed is not None else i)
            top = int(torch.randint(h - self.size + 1, (1,), generator=gen))
            left = int(torch.randint(w - self.size + 1, (1,), generator=gen))
            flip = bool(torch.rand((), generator=gen) < 0.5)
        else:
            top, left, flip = (h - self.size) // 2, (w - self.size) // 2, False
        crop = img[:, top:top + self.size, left:left + self.size]
        return uint8_to_float(crop.flip(-1) if flip else crop)


class SeededSampler(torch.utils.data.Sampler):
    """Shuffled (index, crop seed) pairs; each pass is a new epoch of the same seeded stream."""

    def __init__(self, n: int, seed: int):
        self.n, self.gen = n, torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.gen).tolist()
        seeds = torch.randint(2 ** 62, (self.n,), generator=self.gen).tolist()
        return iter(zip(order, seeds))


def endless_loader(dataset: ImageFolder, batch_size: int, seed: int, num_workers: int) -> Iterator[Tensor]:
    """Shuffled epochs forever; the same seed gives the same order and the same crops."""
    if len(dataset) < batch_size:
        raise ValueError(f"{len(dataset)} training images are fewer than one batch of {batch_size}")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=SeededSampler(len(dataset), seed),
                                         drop_last=True, num_workers=num_workers,
                                         persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())
    while True:
        yield from loader
