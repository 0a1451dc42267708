"""EMA VQ with dead-code restarts: Dhariwal, Jun, Payne, Kim, Radford, Sutskever, "Jukebox: A
Generative Model for Music", 2020 (arXiv 2005.00341, section 2.2 "random restarts"); official code
github.com/openai/jukebox, jukebox/vqvae/bottleneck.py (BottleneckBlock.update_k). SoundStream
(arXiv 2107.03312, section III-C) replaces unused codes the same way.

Identical to `ema_vq` (same N(0, 1) init, decay 0.99, Laplace-smoothed EMA codebook, commitment
0.25) except for the restart, so the two isolate its effect.

The dead-code rule, and why it deviates from Jukebox's: Jukebox calls a code dead when the EMA
(mu = 0.99) of its assignments per batch is below 1 (EnCodec's code: below 2,
`threshold_ema_dead_code`). Those counts are per batch, so the rule depends on the batch size N: a
code used at its fair share expects N/K assignments per batch, and when K > N the average code
cannot stay above 1. Jukebox counts over its whole data-parallel batch (all-reduced over GPUs),
many more tokens than its 2,048 codes, so there the rule only catches codes that are almost never
chosen; at our 1,024 tokens per step and K = 16,384 it re-seeded nearly every code every step and
capped utilization near 2N/K (measured: 45.5% at K = 4,096, 11.8% at 16,384). Here usage is the
EMA (decay 0.99, a window of about 100 steps) of each code's *share* of the batch's tokens, and a
code is dead when that share is below `threshold` x 1/K, a fraction of uniform usage; Jukebox's
own `restore_k` uses the same uniform expectation (num_tokens / K) to initialise its counts. N
does not enter, so the rule means the same at every batch size. Equivalence with the old rule:
"EMA count < c per batch" is "share < c/N", i.e. threshold = c K / N (Jukebox's rule at our
K = N = 1,024 is threshold 1; 0.1 here is gentler, a code must fall to a tenth of its fair share).

Restarted codes move to distinct random encoder outputs of the current batch (at most one per
token: Jukebox tiles the batch with small noise when K exceeds it; distinct points avoid identical
twins that the nearest-code search could never tell apart) and their usage restarts at 1/K, so a
new code has about 230 steps (log(0.1) / log(0.99)) to win assignments before it can be re-seeded
(Jukebox re-draws a restarted code every step until its count passes the threshold). Codes of the
random init start at the threshold instead, so those no token picks are re-seeded after one step,
as in Jukebox.
The single-level VQ-VAE study (Reyhanian, Wiskott, arXiv 2601.22244) names "periodic reset of
inactive codebook vectors" among its interventions; only its abstract was available to us, so its
exact criterion is not reproduced.
Jukebox also seeds the initial codebook from data; here that is `kmeans_vq`'s job.
"""
import torch

from vqbench import Quantizer, QuantizerOutput
from vqbench.ops import ema_codebook_update, nearest_code, straight_through, usage_metrics


class ResetVQ(Quantizer):
    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, decay: float = 0.99,
                 eps: float = 1e-5, threshold: float = 0.1):
        super().__init__(dim, codebook_size)
        self.beta, self.decay, self.eps, self.threshold = beta, decay, eps, threshold
        embed = torch.randn(codebook_size, dim)
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.ones(codebook_size))  # EMA counts, 1 pseudo-count
        self.register_buffer("embed_sum", embed.clone())
        # EMA of each code's share of the batch's tokens. The init codes start at the threshold, so
        # one step without assignments marks them dead (Jukebox: count 1 at threshold 1).
        self.register_buffer("usage", torch.full((codebook_size,), threshold / codebook_size))

    def codebook(self) -> torch.Tensor:
        return self.embed

    @torch.no_grad()
    def _restart(self, flat: torch.Tensor, idx: torch.Tensor) -> int:
        share = torch.bincount(idx, minlength=self.codebook_size).to(self.usage.dtype) / idx.numel()
        self.usage.mul_(self.decay).add_(share, alpha=1 - self.decay)
        dead = (self.usage * self.codebook_size < self.threshold).nonzero().squeeze(1)
        if dead.numel() > flat.shape[0]:  # more dead codes than tokens: a random subset now, the rest later
            dead = dead[torch.randperm(dead.numel(), device=dead.device)[:flat.shape[0]]]
        if dead.numel():
            new = flat[torch.randperm(flat.shape[0], device=flat.device)[:dead.numel()]].to(self.embed.dtype)
            self.embed[dead] = new
            self.embed_sum[dead] = new  # one pseudo-count at the new place: the next EMA step keeps it there
            self.cluster_size[dead] = 1.0
            self.usage[dead] = 1.0 / self.codebook_size
        return dead.numel()

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        flat = z.detach().reshape(-1, self.dim)
        idx, _ = nearest_code(flat, self.embed)
        z_q = self.embed[idx].view_as(z)
        loss = self.beta * torch.nn.functional.mse_loss(z, z_q)
        metrics = usage_metrics(idx, self.codebook_size)
        if self.training:
            self.embed.copy_(ema_codebook_update(self.cluster_size, self.embed_sum, flat, idx, self.decay, self.eps))
            metrics["restarted"] = float(self._restart(flat, idx))
        return QuantizerOutput(straight_through(z, z_q), idx.view(z.shape[:-1]), loss, metrics)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embed[codes]
