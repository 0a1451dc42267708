"""Finite scalar quantization: Mentzer, Minnen, Agustsson, Tschannen, "Finite Scalar Quantization:
VQ-VAE Made Simple", ICLR 2024 (arXiv 2309.15505).

Project the latent to d = len(levels) channels, bound channel i to L_i values with tanh, round
(straight-through), and project back. The codebook is the implicit grid of prod(L_i) points:
nothing to learn, nothing to collapse. Levels follow the paper's recommendations for each
codebook size (table 1, see vqbench.ops.fsq_levels); the harness's `dim` is fixed, so FSQ brings
its own dim -> d -> dim linear projections (as the paper does when the encoder width is not d).
"""
import math

import torch
from torch import nn

from vqbench import Quantizer, QuantizerOutput
from vqbench.ops import forward_as, fsq_levels, usage_metrics


class FSQ(Quantizer):
    def __init__(self, dim: int, codebook_size: int, levels: list[int] | None = None, eps: float = 1e-3):
        super().__init__(dim, codebook_size)
        levels = list(levels) if levels else fsq_levels(codebook_size)  # paper's table, prod <= K
        self.levels = levels
        self.codebook_size = math.prod(levels)  # what we really emit: prod(L_i) <= K
        if self.codebook_size > codebook_size:
            raise ValueError(f"levels {levels} give {self.codebook_size} codes > codebook_size {codebook_size}")
        self.eps = eps
        self.register_buffer("_levels", torch.tensor(levels), persistent=False)
        # mixed-radix place values: code = sum_i digit_i * prod_{j<i} L_j
        self.register_buffer("_basis", torch.cumprod(torch.tensor([1] + levels[:-1]), 0), persistent=False)
        self.project_in = nn.Linear(dim, len(levels))
        self.project_out = nn.Linear(len(levels), dim)

    def _bound(self, x: torch.Tensor) -> torch.Tensor:
        # tanh into (-L/2, L/2); even L are shifted by half a step so that rounding yields exactly L
        # integers, -L/2 .. L/2 - 1 (the paper's reference code)
        half = (self._levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(x + shift) * half - offset

    def _digits_to_grid(self, digits: torch.Tensor) -> torch.Tensor:
        half_width = self._levels // 2
        grid = (digits - half_width) / half_width  # normalized grid values in [-1, 1]
        return grid.to(self.project_out.weight.dtype)

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
