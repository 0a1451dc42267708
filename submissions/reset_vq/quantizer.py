"""EMA VQ with dead-code restarts: Dhariwal, Jun, Payne, Kim, Radford, Sutskever, "Jukebox: A
Generative Model for Music", 2020 (arXiv 2005.00341, section 2.2 "random restarts"); SoundStream
(arXiv 2107.03312) replaces unused codes the same way.

Identical to `ema_vq` (same N(0, 1) init, decay 0.99, commitment 0.25) except for the restart, so
the two isolate its effect: after each EMA step, every code whose EMA usage (assignments per
batch) is below `threshold` is re-seeded with a random encoder output of the current batch.
Jukebox also seeds the initial codebook from data; here that is `kmeans_vq`'s job.
"""
import torch

from vqbench import Quantizer, QuantizerOutput
from vqbench.ops import ema_codebook_update, nearest_code, restart_dead_codes, straight_through, usage_metrics


class ResetVQ(Quantizer):
    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, decay: float = 0.99,
                 eps: float = 1e-5, threshold: float = 1.0):
        super().__init__(dim, codebook_size)
        self.beta, self.decay, self.eps, self.threshold = beta, decay, eps, threshold
        embed = torch.randn(codebook_size, dim)
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.ones(codebook_size))  # EMA usage, 1 pseudo-count
        self.register_buffer("embed_sum", embed.clone())

    def codebook(self) -> torch.Tensor:
        return self.embed

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        flat = z.detach().reshape(-1, self.dim)
        idx, _ = nearest_code(flat, self.embed)
        z_q = self.embed[idx].view_as(z)
        loss = self.beta * torch.nn.functional.mse_loss(z, z_q)
        metrics = usage_metrics(idx, self.codebook_size)
        if self.training:
            self.embed.copy_(ema_codebook_update(self.cluster_size, self.embed_sum, flat, idx, self.decay, self.eps))
            # Jukebox's threshold is in assignments per batch (1.0): when K exceeds the tokens in a
            # batch most codes cannot reach it, and those are re-seeded every step
            restarted = restart_dead_codes(self.embed, self.cluster_size, self.embed_sum, flat, self.threshold)
            metrics["restarted"] = float(restarted)
        return QuantizerOutput(straight_through(z, z_q), idx.view(z.shape[:-1]), loss, metrics)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embed[codes]
