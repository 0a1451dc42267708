"""Progressive quantization (ProVQ): Zhao, Zou, Lin, Liu, "Mitigating Premature Discretization with
Progressive Quantization for Robust Vector Tokenization", 2026 (arXiv 2603.22304; ICML format).
No official code release was found (GitHub index searched for the title, arXiv id and "ProVQ").

What the paper states (abstract and introduction, the parts of the text that could be read here):
discretizing from step 0 forces the codebook onto latents before the encoder has captured the data
manifold ("premature discretization"); ProVQ makes "quantization hardness" a function of training
progress and anneals smoothly "from a continuous latent space to a discrete one", so the codebook
settles on the expanded manifold. Secondary summaries add: manifold warm-up is decoupled from
discretization (continuous first), and the anneal is cosine-shaped.

NOT FROM THE PAPER'S EQUATIONS: the method section (its parameterization, schedule, equation
numbers, defaults and losses) was not readable from this project's sources, so no equation number
is cited and every formula below is this benchmark's reading, chosen as the closest to the text:

  (a) Parameterization: z_out = (1 - h) z + h q, q = nearest code, h in [0, 1]. The text says the
      latent space itself goes from continuous to discrete; this is the one-parameter path whose
      endpoints are exactly the encoder's continuous latent (h = 0) and the VQ output (h = 1). A
      softmax-temperature relaxation was not chosen: its soft end is a mean of codes, not the
      continuous latent. A per-token random mask (quantize a fraction h of tokens) has the same
      endpoints and is not excluded by the readable text; the deterministic blend is "smooth".
  (b) Schedule: h(t) = (1 - cos(pi t / T_a)) / 2 for t < T_a = anneal_fraction * total_steps, then
      h = 1. Cosine as the summaries report; its flat start keeps the first steps near-continuous
      (h < 0.1 for the first 20% of the anneal), i.e. continuous first. h(0) = 0 and h = 1 at the
      end are the text's endpoints. anneal_fraction = 0.5 is ours: the decoder then trains on
      exactly the hard codes it is scored on for the second half (no train/eval gap at scoring).
  (c) Gradients and losses: the gradient to z is the identity at every h (straight-through on the
      q term, van den Oord et al. 2017), and VQ-VAE's codebook + commitment loss (beta 0.25, eq. 3
      of that paper) applies from step 0, so the codebook tracks the encoder while the decoder still
      sees (mostly) continuous latents. The reconstruction loss reaches the codebook only through
      that codebook loss, as in plain VQ.
  (d) Codebook init: uniform, as the `vq` baseline, so the schedule is the only difference.

Progress comes from the harness: the train loop calls schedule(step, total_steps) before every
step, so h is a pure function of (step, total_steps); `hardness` is a buffer only so a saved
state carries it. Eval mode is always fully hard (h = 1) and z_q is the code vector bit-exactly,
because the harness scores eval from decode(codes): any blending exists in training only.
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
        # set from (step, total_steps) by schedule(); a buffer only so saved state carries it.
        # 1 (plain VQ) until schedule() is first called
        self.register_buffer("hardness", torch.tensor(1.0))

    def schedule(self, step: int, total_steps: int) -> None:
        """Reading (b) of the module docstring: cosine 0 -> 1 over the first anneal_fraction, then 1."""
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
