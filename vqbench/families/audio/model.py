"""A 1-D convolutional waveform codec around the quantizer (the SoundStream/EnCodec layout:
Zeghidour et al. 2021, arXiv 2107.03312; Defossez et al. 2022, arXiv 2210.13438), without their
LSTM, and the training losses: waveform L1 + multi-resolution STFT (Yamamoto et al. 2020,
Parallel WaveGAN, arXiv 1910.11480) + log-mel L1, and an optional multi-scale waveform
discriminator (MelGAN, Kumar et al. 2019) for the full tier.

Encoder: conv(7) -> per stride s: residual units (dilations 1, 3, 9), ELU, conv(2s, stride s)
doubling the channels -> ELU, conv(3) to `dim`. Every stride's padding is chosen so an input of
L samples (a multiple of the hop = prod(strides)) gives exactly L / hop tokens, and the decoder
(transposed convs, cropped) gives back exactly L samples: no token ever covers padding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, 7, dilation=dilation, padding=3 * dilation)
        self.conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.elu(self.conv1(F.elu(x))))


class Down(nn.Module):
    """Residual units, then a conv of kernel 2s, stride s, padded (ceil(s/2), floor(s/2)): L -> L / s."""

    def __init__(self, c_in: int, c_out: int, stride: int, dilations: tuple[int, ...] | tuple[()]):
        super().__init__()
        self.units = nn.Sequential(*[ResidualUnit(c_in, d) for d in dilations])
        self.pad = ((stride + 1) // 2, stride // 2)
        self.conv = nn.Conv1d(c_in, c_out, 2 * stride, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(F.elu(self.units(x)), self.pad))


class Up(nn.Module):
    """A transposed conv of kernel 2s, stride s, cropped to exactly L * s, then residual units."""

    def __init__(self, c_in: int, c_out: int, stride: int, dilations: tuple[int, ...]):
        super().__init__()
        self.stride = stride
        self.conv = nn.ConvTranspose1d(c_in, c_out, 2 * stride, stride=stride)
        self.units = nn.Sequential(*[ResidualUnit(c_out, d) for d in dilations])

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[-1] * self.stride
        y = self.conv(F.elu(x))  # (L + 1) * s samples
        left = (self.stride + 1) // 2
        return self.units(y[..., left:left + length])


class Encoder(nn.Module):
    """(batch, 1, samples) -> (batch, samples / hop, dim). With full_rate_units=False the first stride has
    no residual units (its strided conv is a patchify layer), so no residual unit runs at the sample rate."""

    def __init__(self, dim: int, channels: int, strides: list[int], dilations: tuple[int, ...] = (1, 3, 9),
                 full_rate_units: bool = True):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(1, channels, 7, padding=3)]
        c = channels
        for i, s in enumerate(strides):
            layers.append(Down(c, 2 * c, s, dilations if i or full_rate_units else ()))
            c *= 2
        layers += [nn.ELU(), nn.Conv1d(c, dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)
        self.hop = math.prod(strides)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % self.hop:
            raise ValueError(f"{x.shape[-1]} samples are not a whole number of {self.hop}-sample tokens")
        return self.net(x).transpose(1, 2)


class Decoder(nn.Module):
    """(batch, tokens, dim) -> (batch, 1, tokens * hop); the mirror of Encoder (full_rate_units=False: the
    last transposed conv is followed by no residual units)."""

    def __init__(self, dim: int, channels: int, strides: list[int], dilations: tuple[int, ...] = (1, 3, 9),
                 full_rate_units: bool = True):
        super().__init__()
        c = channels * 2 ** len(strides)
        layers: list[nn.Module] = [nn.Conv1d(dim, c, 7, padding=3)]
        for i, s in enumerate(reversed(strides)):
            last = i == len(strides) - 1
            layers.append(Up(c, c // 2, s, () if last and not full_rate_units else dilations))
            c //= 2
        layers += [nn.ELU(), nn.Conv1d(c, 1, 7, padding=3)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.transpose(1, 2))


# ------------------------------------------------------------------------------ spectral features

def hz_to_mel(f):
    """Slaney's auditory scale (Auditory Toolbox, 1998): linear below 1 kHz, logarithmic above."""
    f = torch.as_tensor(f, dtype=torch.float64)
    return torch.where(f < 1000, f * 3 / 200, 15 + 27 * torch.log(f.clamp_min(1e-9) / 1000) / math.log(6.4))


def mel_to_hz(m: Tensor) -> Tensor:
    return torch.where(m < 15, m * 200 / 3, 1000 * torch.exp((m - 15) * math.log(6.4) / 27))


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters, equally spaced on the Slaney mel scale, area-
    normalised (Slaney's 2 / bandwidth); the definition librosa.filters.mel uses by default."""
    f_max = f_max or sample_rate / 2
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2,
                                     dtype=torch.float64))
    lower = (freqs[None] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    upper = (edges[2:, None] - freqs[None]) / (edges[2:] - edges[1:-1])[:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0)
    return (weights * (2 / (edges[2:] - edges[:-2]))[:, None]).float()


def magnitude(x: Tensor, n_fft: int, hop: int) -> Tensor:
    """|STFT| of (batch, samples) with a Hann window: (batch, freqs, frames)."""
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    return torch.stft(x, n_fft, hop, window=window, return_complex=True).abs()


RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))  # (n_fft, hop), Parallel WaveGAN's three scaled to 16-24 kHz


def stft_distance(x_hat: Tensor, x: Tensor, resolutions=RESOLUTIONS, eps: float = 1e-7) -> Tensor:
    """Multi-resolution STFT loss per item (batch,): mean over resolutions of spectral convergence
    ||S - S_hat||_F / ||S||_F plus mean |log S - log S_hat| (Parallel WaveGAN, eq. 4-6)."""
    total = 0
    for n_fft, hop in resolutions:
        s, s_hat = magnitude(x, n_fft, hop), magnitude(x_hat, n_fft, hop)
        convergence = (s - s_hat).flatten(1).norm(dim=1) / s.flatten(1).norm(dim=1).clamp_min(eps)
        log_mag = (torch.log(s.clamp_min(eps)) - torch.log(s_hat.clamp_min(eps))).abs().flatten(1).mean(1)
        total = total + convergence + log_mag
    return total / len(resolutions)


class LogMel(nn.Module):
    """log10 mel spectrogram (batch, samples) -> (batch, n_mels, frames), window 1024 / hop 256 at 16 kHz
    scaled with the rate; 80 mel bands."""

    def __init__(self, sample_rate: int, n_mels: int = 80):
        super().__init__()
        self.n_fft = 1024 * sample_rate // 16000
        self.hop = self.n_fft // 4
        self.register_buffer("fb", mel_filterbank(sample_rate, self.n_fft, n_mels), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.log10((self.fb.to(x.dtype) @ magnitude(x, self.n_fft, self.hop)).clamp_min(1e-5))


# ------------------------------------------------------------------------------ training loss

class WaveDiscriminator(nn.Module):
    """MelGAN's multi-scale discriminator: grouped strided convs on the waveform at 1x, 2x, 4x pooling."""

    def __init__(self, channels: int = 16, scales: int = 3):
        super().__init__()

        def one():
            c = channels
            layers = [nn.Conv1d(1, c, 15, padding=7), nn.LeakyReLU(0.2)]
            for _ in range(3):
                layers += [nn.Conv1d(c, min(4 * c, 1024), 41, stride=4, padding=20, groups=min(c, 16)),
                           nn.LeakyReLU(0.2)]
                c = min(4 * c, 1024)
            return nn.Sequential(*layers, nn.Conv1d(c, 1, 3, padding=1))
        self.nets = nn.ModuleList([one() for _ in range(scales)])

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i, net in enumerate(self.nets):
            outs.append(net(x))
            if i < len(self.nets) - 1:
                x = F.avg_pool1d(x, 4, 2, padding=1, count_include_pad=False)
        return outs


class CodecLoss(nn.Module):
    """(x_hat, x) -> l1_weight * |x - x_hat| + stft_weight * multi-resolution STFT + mel_weight * log-mel L1
    [+ gan_weight * hinge generator loss]. As in the image family, the discriminator takes its own
    Adam step inside a training call, before the generator term is added."""

    def __init__(self, sample_rate: int, l1_weight: float = 1.0, stft_weight: float = 1.0, mel_weight: float = 1.0,
                 gan_weight: float = 0.0, gan_start: int = 0, disc_lr: float = 1e-4):
        super().__init__()
        self.l1_weight, self.stft_weight, self.mel_weight = l1_weight, stft_weight, mel_weight
        self.mel = LogMel(sample_rate)
        self.gan_weight, self.gan_start = gan_weight, gan_start
        self.disc = WaveDiscriminator() if gan_weight > 0 else None
        self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=disc_lr, betas=(0.5, 0.9)) if self.disc else None
        self.calls = 0

    def forward(self, x_hat: Tensor, x: Tensor) -> Tensor:
        a, b = x_hat.flatten(1), x.flatten(1)
        loss = self.l1_weight * (a - b).abs().mean()
        if self.stft_weight:
            loss = loss + self.stft_weight * stft_distance(a, b).mean()
        if self.mel_weight:
            loss = loss + self.mel_weight * (self.mel(a) - self.mel(b)).abs().mean()
        training = torch.is_grad_enabled() and x_hat.requires_grad
        if self.disc is not None and self.calls >= self.gan_start:
            if training:
                self.disc.requires_grad_(True)
                d_loss = sum(F.relu(1 - r).mean() + F.relu(1 + f).mean()
                             for r, f in zip(self.disc(x), self.disc(x_hat.detach())))
                self.disc_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                self.disc_opt.step()
            self.disc.requires_grad_(False)
            loss = loss + self.gan_weight * sum(-f.mean() for f in self.disc(x_hat))  # hinge generator term
        if training:
            self.calls += 1
        return loss
