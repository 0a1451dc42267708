"""Residual vector quantization as in SoundStream: Zeghidour, Luebs, Omran, Skoglund, Tagliasacchi,
"SoundStream: An End-to-End Neural Audio Codec", 2021 (arXiv 2107.03312, section III-C,
algorithm 1). SoundStream's code is not public; the reference implementations are
vector-quantize-pytorch's ResidualVQ (github.com/lucidrains/vector-quantize-pytorch) and EnCodec's
(github.com/facebookresearch/encodec, quantization/core_vq.py).

Level 1 quantizes z, level 2 quantizes what level 1 left over, and z_q is the sum. To spend the
task's bit budget, depth 2 codebooks of sqrt(K) codes each: 2 x log2 sqrt(K) = log2 K bits per
token, but K representable points (every pair of codes). Each level is trained the SoundStream
way: k-means init on the first training batch, EMA updates (decay 0.99), and dead-code restart
from the current batch's residuals. Commitment 0.25 per level, on that level's residual.

Deviations: 2 levels of sqrt(K) codes (SoundStream: many levels of 1,024) so every baseline
spends log2 K bits; k-means with 10 Lloyd iterations (EnCodec: 50); the dead-code threshold is an
EMA count below 1 per batch (Jukebox's; EnCodec uses 2). That threshold is per batch, but every
task gives each level at least 8 tokens per code per batch (image lite at K = 16,384: 1,024 tokens
for 128 codes), so a code used at its fair share stays above it, unlike `reset_vq`'s single level
of K codes.
"""
import math

import torch
import torch.nn.functional as F

from vqbench import Quantizer, QuantizerOutput
from vqbench.kmeans import quick_kmeans
from vqbench.ops import ema_codebook_update, joint_codes, nearest_code, restart_dead_codes, straight_through, usage_metrics


class RVQ(Quantizer):
    def __init__(self, dim: int, codebook_size: int, depth: int = 2, beta: float = 0.25, decay: float = 0.99,
                 eps: float = 1e-5, threshold: float = 1.0, kmeans_iters: int = 10):
        super().__init__(dim, codebook_size)
        # sqrt(K) per level when log2 K divides by depth; otherwise the largest power of two
        # that fits, so bits/token never exceed the task's (e.g. K = 2^9 -> 2 x 2^4)
        self.depth = depth
        self.codebook_size = 2 ** (int(math.log2(codebook_size)) // depth)
        self.beta, self.decay, self.eps = beta, decay, eps
        self.threshold, self.kmeans_iters = threshold, kmeans_iters
        embed = torch.randn(depth, self.codebook_size, dim)
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.ones(depth, self.codebook_size))
        self.register_buffer("embed_sum", embed.clone())
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        flat = z.reshape(-1, self.dim)
        residual = flat.detach()
        z_q = torch.zeros_like(residual)
        codes, loss, restarted = [], 0.0, 0
        first = self.training and not bool(self.initialized)
        for level in range(self.depth):
            embed, counts, sums = self.embed[level], self.cluster_size[level], self.embed_sum[level]  # views
            if first:  # k-means on this level's residuals of the first training batch
                with torch.no_grad():
                    embed.copy_(quick_kmeans(residual, self.codebook_size, self.kmeans_iters))
                    sums.copy_(embed)
            idx, _ = nearest_code(residual, embed)
            q = embed[idx]  # a copy: the EMA step below does not change this step's output
            # commitment on the level's input: z minus the (fixed) codes chosen by earlier levels
            loss = loss + self.beta * F.mse_loss(flat - z_q, q)
            if self.training:
                embed.copy_(ema_codebook_update(counts, sums, residual, idx, self.decay, self.eps))
                restarted += restart_dead_codes(embed, counts, sums, residual, self.threshold)
            residual = residual - q
            z_q = z_q + q
            codes.append(idx)
        if first:
            self.initialized.fill_(True)
        codes = torch.stack(codes, -1)
        place = self.codebook_size ** torch.arange(self.depth, device=codes.device)
        metrics = usage_metrics((codes * place).sum(-1), self.codebook_size ** self.depth)  # joint symbols
        metrics["restarted"] = float(restarted)
        return QuantizerOutput(straight_through(z, z_q.view_as(z)), codes.view(*z.shape[:-1], self.depth), loss, metrics)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        z_q = torch.zeros(*codes.shape[:-1], self.dim, device=self.embed.device, dtype=self.embed.dtype)
        for level in range(self.depth):  # same order of additions as forward: bit-identical
            z_q = z_q + self.embed[level][codes[..., level]]
        return z_q

    def codebook(self) -> torch.Tensor:
        """All K = codebook_size^depth reachable points, row c0 + c1 * Kl + ... (the harness's joint
        symbol order), so the codebook rank counts what the decoder can actually receive."""
        return self.decode(joint_codes(self.codebook_size, self.depth, self.embed.device))
