"""Gumbel-softmax quantizer, as in DALL-E's dVAE: Ramesh et al., "Zero-Shot Text-to-Image
Generation", ICML 2021 (arXiv 2102.12092, section 2.1 and appendix A); module form of taming
transformers' GumbelQuantize (Esser, Rombach, Ommer, arXiv 2012.09841).

A linear layer turns z into logits over the K codes; training uses the relaxed (soft) one-hot
sample softmax((logits + Gumbel noise) / tau) times the codebook, with a KL term pulling the code
distribution toward uniform; eval takes the hard argmax. The temperature tau is annealed from 1
to 1/16 by schedule() (DALL-E's endpoints: at 1/16 the relaxed ELBO is close to the true one).
Training memory is tokens x K floats, a few GB at K = 2^18 with 1k tokens.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from vqbench import Quantizer, QuantizerOutput
from vqbench.ops import usage_metrics


class GumbelVQ(Quantizer):
    def __init__(self, dim: int, codebook_size: int, tau_start: float = 1.0, tau_end: float = 1 / 16,
                 anneal_fraction: float = 0.5, kl_weight: float = 5e-4):
        super().__init__(dim, codebook_size)
        self.tau_start, self.tau_end, self.anneal_fraction = tau_start, tau_end, anneal_fraction
        self.kl_weight = kl_weight  # taming's default; DALL-E's beta = 6.6 weighs an ELBO in other units
        self.proj = nn.Linear(dim, codebook_size)
        self.embed = nn.Parameter(torch.randn(codebook_size, dim))  # nn.Embedding's N(0, 1), as taming
        self.register_buffer("tau", torch.tensor(tau_start))

    def schedule(self, step: int, total_steps: int) -> None:
        # cosine from tau_start to tau_end over the first anneal_fraction of training, then flat.
        # DALL-E anneals over its first 150k updates; our runs are far shorter, so a fraction.
        anneal_steps = self.anneal_fraction * total_steps
        t = min(step / anneal_steps, 1.0) if anneal_steps > 0 else 1.0
        self.tau.fill_(self.tau_end + (self.tau_start - self.tau_end) * 0.5 * (1 + math.cos(math.pi * t)))

    def codebook(self) -> torch.Tensor:
        return self.embed

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        logits = self.proj(z)
        idx = logits.argmax(-1)
        if not self.training:  # hard and deterministic: exactly decode(codes)
            return QuantizerOutput(self.embed[idx], idx, torch.zeros((), device=z.device), usage_metrics(idx, self.codebook_size))
        soft = F.gumbel_softmax(logits, tau=float(self.tau), hard=False, dim=-1)
        z_q = soft @ self.embed
        # KL(q(c|z) || uniform) = sum q log(q K), averaged over tokens (taming's form)
        log_q = F.log_softmax(logits, -1)
        kl = (log_q.exp() * (log_q + math.log(self.codebook_size))).sum(-1).mean()
        metrics = usage_metrics(idx, self.codebook_size)
        metrics["tau"] = float(self.tau)
        # codes = argmax of the logits (the code eval would emit), not of the noisy sample
        return QuantizerOutput(z_q, idx, self.kl_weight * kl, metrics)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embed[codes]
