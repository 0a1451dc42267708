"""VQGAN-style convolutional encoder/decoder (Esser et al. 2021, as used by SimVQ) and the
optional perceptual + adversarial training losses of the full tier.

Encoder: conv -> per level `num_res_blocks` residual blocks (GroupNorm, SiLU) at channels
`channels * ch_mult[level]`, a stride-2 conv between levels -> two mid blocks -> GroupNorm, SiLU,
conv to `dim`. The downsampling factor is 2 ** (len(ch_mult) - 1); the latent grid (h, w) leaves
as (batch, tokens = h * w, dim), row-major, which is what the quantizer contract takes. The
decoder mirrors it (nearest upsampling + conv, one more block per level as in taming).
No attention blocks: SimVQ's ImageNet-128 model has none.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) if channels % 32 else 32, channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def to_tokens(z: Tensor) -> Tensor:
    """(batch, dim, h, w) -> (batch, h * w, dim)."""
    return z.flatten(2).transpose(1, 2)


def from_tokens(z: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
    """(batch, tokens, dim) -> (batch, dim, h, w); a square grid unless `grid` is given."""
    b, t, d = z.shape
    h, w = grid or (math.isqrt(t), math.isqrt(t))
    if h * w != t:
        raise ValueError(f"{t} tokens do not form a {h}x{w} grid")
    return z.transpose(1, 2).reshape(b, d, h, w)


class Encoder(nn.Module):
    def __init__(self, dim: int, channels: int, ch_mult: list[int], num_res_blocks: int, in_channels: int = 3):
        super().__init__()
        widths = [channels * m for m in ch_mult]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        c = channels
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(c, width))
                c = width
            if level < len(widths) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        layers += [ResBlock(c, c), ResBlock(c, c), norm(c), nn.SiLU(), nn.Conv2d(c, dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)
        self.factor = 2 ** (len(ch_mult) - 1)

    def forward(self, x: Tensor) -> Tensor:
        return to_tokens(self.net(x))


class Decoder(nn.Module):
    def __init__(self, dim: int, channels: int, ch_mult: list[int], num_res_blocks: int, out_channels: int = 3):
        super().__init__()
        widths = [channels * m for m in ch_mult]
        c = widths[-1]
        layers: list[nn.Module] = [nn.Conv2d(dim, c, 3, padding=1), ResBlock(c, c), ResBlock(c, c)]
        for level in reversed(range(len(widths))):
            for _ in range(num_res_blocks + 1):
                layers.append(ResBlock(c, widths[level]))
                c = widths[level]
            if level > 0:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
        layers += [norm(c), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)  # separate: the GAN weight reads its grads

    def forward(self, z: Tensor) -> Tensor:
        return self.conv_out(self.net(from_tokens(z)))


class TwoLevelEncoder(nn.Module):
    """VQ-VAE-2's two-level encoder (Razavi et al. 2019, "Generating Diverse High-Fidelity Images with
    VQ-VAE-2", Fig. 2a and its official Sonnet example), on the VQGAN blocks above.

    bottom: x -> features h at the single-level model's factor f (the Encoder above, ending in h's
      width instead of dim); top: h -> a stride-2 conv, a residual block -> z_top at 2f, quantized
      first; its quantized vectors are decoded (conv, residual block, x2 upsampling) back to f and
      concatenated with h, and a 1x1 conv of that gives z_bottom, quantized second. So the bottom
      codes are conditioned on the top ones: they carry what the top level did not, as in the paper.
    The seed paper's own code (Reyhanian & Wiskott 2026, wiskott-lab/single-vs-hier-recon) quantizes
    the two levels independently (no top decoder into the bottom); this follows VQ-VAE-2.
    """

    def __init__(self, dim: int, channels: int, ch_mult: list[int], num_res_blocks: int, in_channels: int = 3):
        super().__init__()
        width = channels * ch_mult[-1]
        self.bottom = Encoder(width, channels, ch_mult, num_res_blocks, in_channels)
        self.top = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), ResBlock(width, width),
                                 norm(width), nn.SiLU(), nn.Conv2d(width, dim, 3, padding=1))
        self.top_decoder = nn.Sequential(nn.Conv2d(dim, width, 3, padding=1), ResBlock(width, width),
                                         nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1))
        self.to_bottom = nn.Sequential(norm(2 * width), nn.SiLU(), nn.Conv2d(2 * width, dim, 1))
        self.factor = 2 * self.bottom.factor  # of the top level

    def forward(self, x: Tensor, quantize) -> list[Tensor]:
        h = self.bottom.net(x)  # (batch, width, h, w) at the bottom level's grid
        z_top = to_tokens(self.top(h))
        condition = self.top_decoder(from_tokens(quantize(0, z_top)))
        z_bottom = to_tokens(self.to_bottom(torch.cat([h, condition], 1)))
        quantize(1, z_bottom)
        return [z_top, z_bottom]


class TwoLevelDecoder(nn.Module):
    """VQ-VAE-2's decoder: the quantized top upsampled x2 by a transposed conv, concatenated with the
    quantized bottom, decoded by the single-level Decoder (on 2 x dim channels)."""

    def __init__(self, dim: int, channels: int, ch_mult: list[int], num_res_blocks: int, out_channels: int = 3):
        super().__init__()
        self.upsample_top = nn.ConvTranspose2d(dim, dim, 4, stride=2, padding=1)
        self.body = Decoder(2 * dim, channels, ch_mult, num_res_blocks, out_channels)

    def forward(self, quantized: list[Tensor]) -> Tensor:
        top, bottom = quantized
        joint = torch.cat([self.upsample_top(from_tokens(top)), from_tokens(bottom)], 1)
        return self.body(to_tokens(joint))


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017) as in taming: stride-2 convs, BatchNorm, LeakyReLU, a logit per patch."""

    def __init__(self, channels: int = 64, layers: int = 3, in_channels: int = 3):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers + 1):
            c_next = channels * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            seq += [nn.Conv2d(c, c_next, 4, stride, 1, bias=False), nn.BatchNorm2d(c_next), nn.LeakyReLU(0.2)]
            c = c_next
        seq.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)
        for m in self.modules():  # taming's init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ReconstructionLoss(nn.Module):
    """pixel loss + perceptual_weight * LPIPS + gan_weight * hinge generator loss (x_hat, x) -> scalar.

    The shared training loop knows one loss and one optimizer, so the discriminator trains itself
    here: every call with gradients enabled after `gan_start` calls first takes one hinge step of
    the discriminator (its own Adam) on the detached reconstruction, then adds the generator term. With both weights 0 this is
    just the pixel loss.
    """

    def __init__(self, pixel: str = "mse", perceptual_weight: float = 0.0, gan_weight: float = 0.0,
                 gan_start: int = 0, disc_channels: int = 64, disc_layers: int = 3, disc_lr: float = 1e-4,
                 lpips: nn.Module | None = None):
        super().__init__()
        self.pixel = F.mse_loss if pixel == "mse" else F.l1_loss
        self.perceptual_weight, self.gan_weight, self.gan_start = perceptual_weight, gan_weight, gan_start
        self.lpips = lpips if perceptual_weight > 0 else None
        if perceptual_weight > 0 and lpips is None:
            raise ValueError("perceptual_weight > 0 needs an LPIPS network")
        self.disc = PatchDiscriminator(disc_channels, disc_layers) if gan_weight > 0 else None
        self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=disc_lr, betas=(0.5, 0.9)) if self.disc else None
        self.calls = 0  # training calls so far (the generator step count)

    def forward(self, x_hat: Tensor, x: Tensor) -> Tensor:
        loss = self.pixel(x_hat, x)
        if self.lpips is not None:
            loss = loss + self.perceptual_weight * self.lpips(x_hat, x).mean()
        training = torch.is_grad_enabled() and x_hat.requires_grad
        if self.disc is not None and self.calls >= self.gan_start:
            if training:  # discriminator step first: stepping after would change weights the caller's backward needs
                self.disc.requires_grad_(True)
                d_loss = F.relu(1 - self.disc(x)).mean() + F.relu(1 + self.disc(x_hat.detach())).mean()
                self.disc_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                self.disc_opt.step()
            self.disc.requires_grad_(False)  # the generator term must not move the discriminator
            loss = loss - self.gan_weight * self.disc(x_hat).mean()
        if training:
            self.calls += 1
        return loss
