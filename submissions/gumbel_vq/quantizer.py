"""Gumbel-softmax quantizer with straight-through hard samples: Jang, Gu, Poole, "Categorical
Reparameterization with Gumbel-Softmax", ICLR 2017 (arXiv 1611.01144, section 2.2, straight-through
Gumbel-softmax), in the module form of taming transformers' GumbelQuantize (official code:
github.com/CompVis/taming-transformers, taming/modules/vqvae/quantize.py; Esser, Rombach, Ommer,
arXiv 2012.09841), with DALL-E's temperature endpoints (Ramesh et al., arXiv 2102.12092, section 2.1).

A linear layer turns z into logits over the K codes. Training draws the hard one-hot sample
argmax(logits + Gumbel noise), returns that code's vector in the forward pass and the gradient of
the relaxed sample softmax((logits + g) / tau) in the backward pass (taming's default,
`straight_through=True` -> `F.gumbel_softmax(..., hard=True)`), plus a KL term pulling the code
distribution toward uniform. So the decoder trains on exactly the kind of vector it sees at eval:
one code vector per token, and the code reported in training is the one sampled.

Deviations:
- Eval emits argmax(logits), the mode, without Gumbel noise (taming also samples in eval, with
  `hard=True`): the contract wants eval codes to be a deterministic function of z.
- DALL-E trains with the relaxed (soft) sample instead, a mixture of code vectors the decoder never
  sees at eval; that was this submission's previous behaviour, replaced because of that mismatch.
- tau: cosine from 1 to 1/16 (DALL-E's endpoints; taming also anneals tau on a cosine) over the
  first half of training (DALL-E: its first 150k updates; our runs are far shorter).
- kl_weight 5e-4: GumbelQuantize's default (taming's GumbelVQ model passes 1e-8).
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
        if not self.training:  # the mode, no noise: deterministic, and exactly decode(codes)
            idx = logits.argmax(-1)
            return QuantizerOutput(self.embed[idx], idx, torch.zeros((), device=z.device), usage_metrics(idx, self.codebook_size))
        # straight-through Gumbel-softmax, as F.gumbel_softmax(hard=True) @ embed computes it but with
        # an exact forward value: the sampled code's vector (gradient to embed through that row), and
        # the relaxed sample's gradient to the logits
        gumbels = -torch.empty_like(logits).exponential_().log()
        soft = F.softmax((logits + gumbels) / self.tau, -1)
        idx = soft.detach().argmax(-1)  # the sampled code, reported as this step's code
        z_q = self.embed[idx] + (soft - soft.detach()) @ self.embed.detach()
        # KL(q(c|z) || uniform) = sum q log(q K), averaged over tokens (taming's form)
        log_q = F.log_softmax(logits, -1)
        kl = (log_q.exp() * (log_q + math.log(self.codebook_size))).sum(-1).mean()
        metrics = usage_metrics(idx, self.codebook_size)
        metrics["tau"] = float(self.tau)
        return QuantizerOutput(z_q, idx, self.kl_weight * kl, metrics)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embed[codes]
