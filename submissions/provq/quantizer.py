"""Progressive quantization (ProVQ): Zhao, Zou, Lin, Liu, "Mitigating Premature Discretization with
Progressive Quantization for Robust Vector Tokenization", 2026 (arXiv 2603.22304).

The paper's point: discretizing from step 0 forces the codebook onto latents before the encoder
has found the data manifold ("premature discretization"); instead, treat quantization hardness
as a curriculum that goes from continuous to discrete. Here the output is

    z_out = (1 - h) z + h q,     q = nearest code, h = hardness in [0, 1]

with the straight-through gradient to z on both terms and VQ-VAE's codebook + commitment loss
(beta 0.25) from the start, so the codebook tracks the encoder while the decoder still sees
(mostly) continuous latents. The exact form of the paper's hardness curriculum is not reproduced
here; the schedule below is our choice:

    h(t) = (1 - cos(pi * t / T_a)) / 2  for t < T_a = anneal_fraction * total_steps,  1 after.

Why this shape: it starts flat (the encoder organizes the latent space almost undisturbed), ends
flat (a gentle hand-off, no jump in the decoder's input distribution), and reaches h = 1 at half
of training so that the decoder trains on exactly the hard codes it will see at evaluation for
the remaining steps (no train/eval gap). In eval mode the output is always fully hard.
"""
import math

import torch
from torch import nn

from vqbench import Quantizer, QuantizerOutput
from vqbench.ops import forward_as, nearest_code, straight_through, uniform_init, usage_metrics, vq_loss


class ProVQ(Quantizer):
    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, anneal_fraction: float = 0.5):
        super().__init__(dim, codebook_size)
        self.beta, self.anneal_fraction = beta, anneal_fraction
        self.embed = nn.Parameter(uniform_init(codebook_size, dim))  # as `vq`, to isolate the schedule
        # a buffer so a resumed checkpoint keeps its place in the curriculum; 1 (plain VQ) until
        # schedule() is first called
        self.register_buffer("hardness", torch.tensor(1.0))

    def schedule(self, step: int, total_steps: int) -> None:
        anneal_steps = self.anneal_fraction * total_steps
        t = min(step / anneal_steps, 1.0) if anneal_steps > 0 else 1.0
        self.hardness.fill_(0.5 * (1.0 - math.cos(math.pi * t)))

    def codebook(self) -> torch.Tensor:
        return self.embed

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        idx, _ = nearest_code(z.detach(), self.embed.detach())
        q = self.embed[idx].view_as(z)
        loss = vq_loss(z, q, self.beta)
        h = float(self.hardness) if self.training else 1.0
        z_hard = straight_through(z, q)
        # at h == 1 return the hard codes bit-exactly (decode(codes) == z_q), not z + 1 * (q - z)
        z_out = z_hard if h >= 1.0 else forward_as((1.0 - h) * z + h * q, z)
        metrics = usage_metrics(idx, self.codebook_size)
        metrics["hardness"] = h
        return QuantizerOutput(z_out, idx.view(z.shape[:-1]), loss, metrics)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embed[codes]
