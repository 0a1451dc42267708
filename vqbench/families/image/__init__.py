"""Image reconstruction: a VQGAN-style conv autoencoder around the quantizer (SimVQ's protocol).

lite: the ~29 bundled photos (vqbench.data.images), 64x64 crops, split by photo; a small
  model that trains and evaluates (rFID included) in minutes on one CPU thread.
full: ImageNet (or any image folder) at 128x128, SimVQ's ImageNet-128 model and losses.

Primary metric: rfid. It is the number the SimVQ/VQGAN tables report and the one that moves
with codebook collapse (a collapsed codebook blurs textures, which Inception features see
before PSNR does). On the lite eval set (~128 crops) its absolute value carries a large
small-sample bias, so lite numbers are not comparable to paper numbers; but the eval set is
fixed, so the bias is the same for every submission and the ranking is meaningful. KID, which
is unbiased at any sample size, is reported beside it as a check.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from vqbench.families import Family, Setup, endless, register_family, to_device
from vqbench.families.image.data import (ImageFolder, LitePhotos, endless_loader, image_files, listing_key,
                                         resolve_root, uint8_to_float)
from vqbench.families.image.metrics import LPIPS, weights_or_reason
from vqbench.families.image.model import Decoder, Encoder, ReconstructionLoss, TwoLevelDecoder, TwoLevelEncoder
from vqbench.families.image.sources import SOURCES
from vqbench.metrics import Unavailable
from vqbench.schema import ConfigError


@dataclass
class Data:
    source: Literal["photos", "folder"] = "photos"  # photos: bundled lite set; folder: ImageNet-style tree
    resolution: int = 64  # side of the square crops the model sees, in pixels
    # photos only
    train_short_sides: list[int] = field(default_factory=lambda: [128, 160, 192, 224, 256])  # scale augmentation
    eval_short_sides: list[int] = field(default_factory=lambda: [128, 256])  # eval crop grids at these scales
    eval_fraction: float = 0.2  # share of photos held out for eval (whole photos, never crops)
    split_seed: int = 0  # fixes which photos are held out; shared by all seeds
    # folder only
    root: str | None = None  # holds <train_split>/ and <eval_split>/; `--data image=PATH` wins
    train_split: str = "train"  # subfolder of root with training images (any depth)
    eval_split: str = "val"  # subfolder of root with eval images (ImageNet val: 50k)
    eval_size: int | None = None  # first N eval images in sorted path order; None = all
    num_workers: int = 4  # DataLoader processes decoding JPEGs
    # both
    eval_batch_size: int = 32  # images per eval batch (memory only; numbers do not depend on it)
    kid_max_samples: int = 10000  # KID keeps at most this many features per side

    def validate(self) -> None:
        if self.resolution < 8:
            raise ConfigError(None, "resolution", f"{self.resolution} < 8", "give resolution >= 8")
        for name in ("train_short_sides", "eval_short_sides") if self.source == "photos" else ():
            if not getattr(self, name) or min(getattr(self, name)) < self.resolution:
                raise ConfigError(None, name, f"{getattr(self, name)} has a side below resolution {self.resolution}",
                                  f"give a non-empty list of sides >= {self.resolution}")
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(None, "eval_fraction", f"{self.eval_fraction} is not in (0, 1)", "give e.g. 0.2")


@dataclass
class Model:
    channels: int = 32  # base width; level i has channels * ch_mult[i]
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2])  # one level each; downsampling 2^(levels-1)
    num_res_blocks: int = 1  # residual blocks per encoder level (decoder: one more)
    pixel_loss: Literal["mse", "l1"] = "mse"  # pixel term of the reconstruction loss
    perceptual_weight: float = 0.0  # LPIPS (AlexNet) term; SimVQ/taming use 1.0
    gan_weight: float = 0.0  # patch-GAN hinge generator term; SimVQ uses 0.1
    gan_start: int = 0  # training steps before the GAN terms switch on
    disc_channels: int = 64  # discriminator base width
    disc_layers: int = 3  # discriminator stride-2 conv layers
    disc_lr: float = 1e-4  # discriminator Adam learning rate (betas 0.5, 0.9)

    def validate(self) -> None:
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ConfigError(None, "ch_mult", f"{self.ch_mult} is not a list of positive ints", "give e.g. [1, 2, 2, 4]")
        for name in ("perceptual_weight", "gan_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(None, name, f"{getattr(self, name)} < 0", f"give {name} >= 0")


@register_family("image")
class Image(Family):
    Data = Data
    Model = Model
    metrics = ("rfid", "kid", "psnr", "ssim", "lpips", "mse")
    primary_metric = "rfid"  # see the module docstring
    sources = SOURCES
    takes_data_root = True
    legacy_data_root = True  # `--data-root` predates `--data image=PATH`
    hierarchical = True  # quantizer.levels of two: VQ-VAE-2's top and bottom (model.TwoLevelEncoder)

    @classmethod
    def check(cls, task) -> None:
        factor = 2 ** (len(task.model.ch_mult) - 1)
        if task.quantizer.levels is not None:
            if len(task.quantizer.levels) != 2:
                raise ConfigError(task.path, "quantizer.levels", f"{len(task.quantizer.levels)} levels; the image "
                                  "family's hierarchical model is VQ-VAE-2's two (top, bottom)", "give two sizes")
            factor *= 2  # the top level's grid is half the bottom's
        if task.data.resolution % factor:
            raise ConfigError(task.path, "data.resolution", f"{task.data.resolution} is not a multiple of the "
                              f"model's downsampling factor {factor}", f"give a multiple of {factor} or change ch_mult")

    @classmethod
    def build(cls, task, seed: int, device: torch.device) -> Setup:
        data, model, dim = task.data, task.model, task.quantizer.dim
        device = torch.device(device)
        batch, eval_batch = task.train.batch_size, data.eval_batch_size
        if data.source == "photos":
            photos = LitePhotos(data.resolution, data.train_short_sides, data.eval_short_sides, data.eval_fraction,
                                data.split_seed)
            eval_set = photos.eval_set  # uint8 on CPU: 128 crops of 64x64 are 1.5 MB
            reference_key = f"photos-{photos.content_key()}"
            train_batches = to_device(endless(lambda g: photos.train.sample(batch, g), seed), device)

            def eval_batches():
                return (uint8_to_float(eval_set[i:i + eval_batch]).to(device)
                        for i in range(0, len(eval_set), eval_batch))
        else:
            root = resolve_root(data.root, task.path)
            train_files = image_files(root, data.train_split, task.path)
            eval_files = image_files(root, data.eval_split, task.path)[:data.eval_size]
            reference_key = f"folder-{listing_key(eval_files, root, data.resolution)}"
            train_set = ImageFolder(train_files, data.resolution, train=True)
            eval_dataset = ImageFolder(eval_files, data.resolution, train=False)
            train_batches = (x.to(device, non_blocking=True)
                             for x in endless_loader(train_set, batch, seed, data.num_workers))

            def eval_batches():
                loader = torch.utils.data.DataLoader(eval_dataset, batch_size=eval_batch, num_workers=data.num_workers,
                                                     pin_memory=torch.cuda.is_available())
                return (x.to(device, non_blocking=True) for x in loader)

        wants_lpips = "lpips" in task.metrics or model.perceptual_weight > 0
        lpips = weights_or_reason(lambda: LPIPS().to(device)) if wants_lpips else None
        if model.perceptual_weight > 0 and isinstance(lpips, Unavailable):
            raise RuntimeError(f"model.perceptual_weight needs LPIPS weights: {lpips.reason}")
        loss = ReconstructionLoss(model.pixel_loss, model.perceptual_weight, model.gan_weight, model.gan_start,
                                  model.disc_channels, model.disc_layers, model.disc_lr,
                                  lpips=None if isinstance(lpips, Unavailable) else lpips).to(device)
        levels = len(task.quantizer.level_sizes)
        make_encoder, make_decoder = (Encoder, Decoder) if levels == 1 else (TwoLevelEncoder, TwoLevelDecoder)
        encoder = make_encoder(dim, model.channels, model.ch_mult, model.num_res_blocks).to(device)
        decoder = make_decoder(dim, model.channels, model.ch_mult, model.num_res_blocks).to(device)
        return Setup(
            levels=levels,
            encoder=encoder,
            decoder=decoder,
            train_batches=train_batches,
            eval_batches=eval_batches,
            reconstruction_loss=loss,
            metric_context={"reference_key": reference_key, "lpips": lpips},
        )
