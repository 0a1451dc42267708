"""Lookup-free quantization (LFQ): Yu et al., "Language Model Beats Diffusion -- Tokenizer is Key
to Visual Generation" (MAGVIT-2), ICLR 2024 (arXiv 2310.05737, section 3.1). The authors released
no code; the reference implementation followed is vector-quantize-pytorch's LFQ
(github.com/lucidrains/vector-quantize-pytorch, lookup_free_quantization.py).

Project to b = floor(log2 K) channels and keep only their signs: the codebook is the implicit
set {-1, 1}^b, the code is the bit pattern, and no distance search is needed. MAGVIT-2 adds an
entropy penalty  E[H(q(z))] - gamma H(E[q(z)])  (confident per-token assignments, diverse use of
the whole codebook) where q(z) = softmax over codes c of 2 <z, c> / temperature.

Deviations: weights follow vector-quantize-pytorch's defaults (entropy 0.1, commitment 0.25,
gamma 1, temperature 0.01), not a configuration from the paper; the entropy is computed exactly
by factorizing over bits (below) instead of over all 2^b codes; K that is not a power of two uses
floor(log2 K) bits, so it emits fewer than K codes.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from vqbench import Quantizer, QuantizerOutput
from vqbench.ops import forward_as, usage_metrics


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


class LFQ(Quantizer):
    def __init__(self, dim: int, codebook_size: int, entropy_weight: float = 0.1,
                 commitment_weight: float = 0.25, diversity_gamma: float = 1.0, temperature: float = 0.01):
        super().__init__(dim, codebook_size)
        self.bits = max(int(math.log2(codebook_size)), 1)
        self.codebook_size = 2 ** self.bits  # what we really emit
        self.entropy_weight, self.commitment_weight = entropy_weight, commitment_weight
        self.diversity_gamma, self.temperature = diversity_gamma, temperature
        self.register_buffer("_powers", 2 ** torch.arange(self.bits), persistent=False)
        self.project_in = nn.Linear(dim, self.bits)
        self.project_out = nn.Linear(self.bits, dim)

    def _bits_to_signs(self, bits: torch.Tensor) -> torch.Tensor:
        return (bits * 2 - 1).to(self.project_out.weight.dtype)

    def _entropy_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Exact MAGVIT-2 entropy terms without materializing (tokens, 2^b) probabilities.

        q(c | x) ∝ exp(2 <x, c> / T) factorizes over bits: p(c_i = +1) = sigmoid(4 x_i / T). So the
        per-token entropy is a sum of binary entropies, and the batch-mean distribution over all
        2^b codes is (1/n) P_lo^T P_hi, where P_lo / P_hi (n, 2^(b/2)) are the per-token joint
        probabilities of the low / high half of the bits: one small matmul even for b = 18.
        """
        logit = 4 * x.reshape(-1, self.bits).float() / self.temperature
        log_p1, log_p0 = F.logsigmoid(logit), F.logsigmoid(-logit)
        p1 = log_p1.exp()
        per_token = _entropy(torch.stack([p1, 1 - p1], -1)).sum(-1).mean()

        def joint(lo: int, hi: int) -> torch.Tensor:  # (n, 2^(hi-lo)) probabilities of bits lo..hi-1
            patterns = (torch.arange(2 ** (hi - lo), device=x.device).unsqueeze(0) >> torch.arange(hi - lo, device=x.device).unsqueeze(1)) & 1
            return (log_p1[:, lo:hi] @ patterns.float() + log_p0[:, lo:hi] @ (1 - patterns).float()).exp()

        half = self.bits // 2
        mean_probs = joint(0, half).T @ joint(half, self.bits) / logit.shape[0]
        return per_token - self.diversity_gamma * _entropy(mean_probs.flatten())

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        x = self.project_in(z)
        bits = (x > 0).long()  # sign, with 0 mapped to -1 so zeros stay in the codebook
        codes = (bits * self._powers).sum(-1)
        signs = self._bits_to_signs(bits)
        z_q = self.project_out(forward_as(signs, x))  # straight-through through the sign
        loss = self.commitment_weight * F.mse_loss(x, signs)
        if self.training and self.entropy_weight:
            loss = loss + self.entropy_weight * self._entropy_loss(x)
        return QuantizerOutput(z_q, codes, loss, usage_metrics(codes, self.codebook_size))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.project_out(self._bits_to_signs((codes.unsqueeze(-1) // self._powers) % 2))

    def codebook(self) -> torch.Tensor:
        return self.decode(torch.arange(self.codebook_size, device=self._powers.device))
