"""Finite scalar quantization: Mentzer, Minnen, Agustsson, Tschannen, "Finite Scalar Quantization:
VQ-VAE Made Simple", ICLR 2024 (arXiv 2309.15505); official code
github.com/google-research/google-research/tree/master/fsq.

Project the latent to d = len(levels) channels, bound channel i to L_i values with tanh, round
(straight-through), and project back. The codebook is the implicit grid of prod(L_i) points:
nothing to learn, nothing to collapse. The harness's `dim` is fixed, so FSQ brings its own
dim -> d -> dim linear projections where dim != d, and none where dim == d (the encoder then emits the
d channels itself, as in the paper and in vector-quantize-pytorch's FSQ, which ext_vqpytorch_fsq runs
as an independent check). Until 2026-11 it projected always: an extra learnable d x d map on
synthetic/code-dim@dim=4, the only task with dim == d and the only one where the two disagreed.

Levels (vqbench.ops.fsq_levels): the paper's table 1 entry where K is in the table and the entry
fits in K; otherwise the densest grid of 5..8 levels per channel (the range the table uses) with
prod <= K. Per task K: 256 [8, 6, 5] (240 codes), 1,024 [8, 5, 5, 5] (1,000), 4,096 [8, 8, 8, 8]
(4,096; the table's [7, 5, 5, 5, 5] has 4,375 > K), 8,192 [8, 8, 5, 5, 5] (8,000), 16,384
[8, 8, 8, 6, 5] (15,360), 65,536 [8, 8, 8, 5, 5, 5] (64,000), 2^18 [8, 8, 8, 8, 8, 8] (262,144).
Deviation: the rate is enforced (prod <= K), so K = 4,096 cannot use the paper's 4,375-code entry.
"""
import math

import torch
from torch import nn

from vqbench import Quantizer, QuantizerOutput
from vqbench.ops import forward_as, fsq_levels, usage_metrics


class FSQ(Quantizer):
    def __init__(self, dim: int, codebook_size: int, levels: list[int] | None = None, eps: float = 1e-3):
        super().__init__(dim, codebook_size)
        levels = list(levels) if levels else fsq_levels(codebook_size)  # prod <= K, see the docstring
        self.levels = levels
        self.codebook_size = math.prod(levels)  # what we really emit: prod(L_i) <= K
        if self.codebook_size > codebook_size:
            raise ValueError(f"levels {levels} give {self.codebook_size} codes > codebook_size {codebook_size}")
        self.eps = eps
        self.register_buffer("_levels", torch.tensor(levels), persistent=False)
        self.register_buffer("_dtype_probe", torch.zeros(()), persistent=False)  # follows .to(dtype) without projections
        # mixed-radix place values: code = sum_i digit_i * prod_{j<i} L_j
        self.register_buffer("_basis", torch.cumprod(torch.tensor([1] + levels[:-1]), 0), persistent=False)
        same = dim == len(levels)  # the encoder already emits the d channels: nothing to project
        self.project_in = nn.Identity() if same else nn.Linear(dim, len(levels))
        self.project_out = nn.Identity() if same else nn.Linear(len(levels), dim)

    def _bound(self, x: torch.Tensor) -> torch.Tensor:
        # tanh into (-L/2, L/2); even L are shifted by half a step so that rounding yields exactly L
        # integers, -L/2 .. L/2 - 1 (the paper's reference code)
        half = (self._levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(x + shift) * half - offset

    @property
    def _dtype(self) -> torch.dtype:
        return self.project_out.weight.dtype if isinstance(self.project_out, nn.Linear) else self._dtype_probe.dtype

    def _digits_to_grid(self, digits: torch.Tensor) -> torch.Tensor:
        half_width = self._levels // 2
        grid = (digits - half_width) / half_width  # normalized grid values in [-1, 1]
        return grid.to(self._dtype)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        bounded = self._bound(self.project_in(z))
        digits = (bounded.round() + self._levels // 2).long()  # 0 .. L_i - 1 per channel
        codes = (digits * self._basis).sum(-1)
        # the forward value is computed from the digits exactly as decode() does, so eval-mode
        # decode(codes) == z_q bit for bit; the gradient is the straight-through one of round()
        soft = bounded / (self._levels // 2)
        z_q = self.project_out(forward_as(self._digits_to_grid(digits), soft))
        return QuantizerOutput(z_q, codes, torch.zeros((), device=z.device), usage_metrics(codes, self.codebook_size))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        digits = (codes.unsqueeze(-1) // self._basis) % self._levels
        return self.project_out(self._digits_to_grid(digits))

    def codebook(self) -> torch.Tensor:
        return self.decode(torch.arange(self.codebook_size, device=self._basis.device))
