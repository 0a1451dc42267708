"""Structure tokenizer around the quantizer: invariant residue features -> conv encoder -> one
latent per residue; decoder: conv + transformer -> backbone coordinates (N, CA, C per residue).

Why this shape. Tokens should describe local structure, as in StructTokenBench's tokenizers
(FoldSeek, ProTokens, ESM3's VQ-VAE all emit one token per residue from its neighbourhood): the
encoder sees SE(3)-invariant features (geometry.residue_features) through a stack of 1-D
convolutions, so a token cannot depend on the frame the file happens to use. The decoder must
place residues globally, so after its convolutions it attends over the whole chain (a small
transformer; the convolutions give it relative position). It outputs Cartesian coordinates in a
frame of its own, scored after superposition (geometry.aligned_loss): unlike torsions rebuilt with
NeRF, an error in one residue does not swing the rest of the chain about it (the lever-arm effect),
and the loss is the RMSD the metrics report.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from vqbench.families.protein.geometry import ANGLE_AT_C, ANGLE_AT_CA, ANGLE_AT_N, NUM_FEATURES, nerf, residue_features


class ConvBlock(nn.Module):
    """Pre-norm residual 1-D conv over residues; 'same' zero padding at chain ends only."""

    def __init__(self, width: int, kernel: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.conv = nn.Conv1d(width, width, kernel, padding=kernel // 2)
        self.mix = nn.Linear(width, width)

    def forward(self, h: Tensor) -> Tensor:  # (batch, L, width)
        y = self.conv(self.norm(h).transpose(1, 2)).transpose(1, 2)
        return h + self.mix(nn.functional.gelu(y))


class Encoder(nn.Module):
    def __init__(self, dim: int, width: int, blocks: int, kernel: int):
        super().__init__()
        self.inp = nn.Linear(NUM_FEATURES, width)
        self.blocks = nn.Sequential(*[ConvBlock(width, kernel) for _ in range(blocks)])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim))

    def forward(self, x: Tensor) -> Tensor:  # (batch, L, 3, 3) -> (batch, L, dim)
        return self.out(self.blocks(self.inp(residue_features(x))))


class Decoder(nn.Module):
    def __init__(self, dim: int, width: int, blocks: int, kernel: int, layers: int, heads: int, output: str = "nerf"):
        super().__init__()
        self.output = output
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.Sequential(*[ConvBlock(width, kernel) for _ in range(blocks)])
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.attend = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers else nn.Identity()
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 9))
        self.register_buffer("ideal", torch.tensor([ANGLE_AT_N, ANGLE_AT_CA, ANGLE_AT_C]), persistent=False)

    def forward(self, z: Tensor) -> Tensor:  # (batch, L, dim) -> (batch, L, 3, 3) in Angstrom
        out = self.out(self.attend(self.blocks(self.inp(z))))
        if self.output == "coordinates":
            return 10 * out.reshape(*z.shape[:2], 3, 3)  # predicted in nm: unit-scale outputs
        # torsions as unit (sin, cos) pairs; bond angles within +-0.35 rad (20 deg) of ideal
        pairs = out[..., :6].reshape(*z.shape[:2], 3, 2)
        pairs = pairs / pairs.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        angles = self.ideal + 0.35 * torch.tanh(out[..., 6:])
        return nerf(pairs[..., 0], pairs[..., 1], angles)
