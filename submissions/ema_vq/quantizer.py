"""VQ-VAE with an exponential-moving-average codebook: van den Oord et al. 2017 (arXiv 1711.00937,
appendix A.1) and Razavi, van den Oord, Vinyals, "Generating Diverse High-Fidelity Images with
VQ-VAE-2", 2019 (arXiv 1906.00446); official code: Sonnet, github.com/google-deepmind/sonnet
(sonnet/src/nets/vqvae.py, VectorQuantizerEMA).

The codebook is not trained by gradients: each step it moves to the decayed running mean of the
encoder outputs assigned to it (online k-means), with Laplace-smoothed cluster counts (decay 0.99,
eps 1e-5). The encoder still gets the straight-through gradient and the commitment loss
beta |z - sg[e]|^2 (0.25).

Deviations: codes start from N(0, 1) (the common PyTorch ports; Sonnet 2 draws VarianceScaling-
uniform codes, per-coordinate std 1/sqrt(dim)) and with one pseudo-count each (Sonnet: zero), see
__init__.

Finding (kept on purpose: the baseline stays faithful): nothing moves a code that is never
chosen, so utilization depends on whether the latents happen to live at the scale of the N(0, 1)
init. On the synthetic codebook-scaling mixture, which is itself about N(0, 1), 93.6% of K = 16,384
codes are used; on image lite, whose encoder outputs sit at another scale, 1.6% of K = 1,024 (16
codes). The fixes the suite compares act exactly there: data init (`kmeans_vq`), restarts
(`reset_vq`), a learned map of the whole codebook (`simvq`).
"""
import torch

from vqbench import Quantizer, QuantizerOutput
from vqbench.ops import ema_codebook_update, nearest_code, straight_through, usage_metrics


class EMAVQ(Quantizer):
    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, decay: float = 0.99,
                 eps: float = 1e-5):
        super().__init__(dim, codebook_size)
        self.beta, self.decay, self.eps = beta, decay, eps
        # N(0, 1): the init of the EMA variant in the reference Sonnet code and its PyTorch ports.
        embed = torch.randn(codebook_size, dim)
        self.register_buffer("embed", embed)
        # Each code starts with one pseudo-observation at its init (as vector-quantize-pytorch).
        # With zero counts (Sonnet) a never-chosen code is divided by ~eps and flies off to
        # infinity; with one it simply stays where it was initialized.
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", embed.clone())

    def codebook(self) -> torch.Tensor:
        return self.embed

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        flat = z.detach().reshape(-1, self.dim)
        idx, _ = nearest_code(flat, self.embed)
        z_q = self.embed[idx].view_as(z)
        loss = self.beta * torch.nn.functional.mse_loss(z, z_q)  # embed is a buffer: no codebook gradient
        if self.training:  # the update takes effect from the next step, as in the reference
            self.embed.copy_(ema_codebook_update(self.cluster_size, self.embed_sum, flat, idx, self.decay, self.eps))
        return QuantizerOutput(straight_through(z, z_q), idx.view(z.shape[:-1]), loss,
                               usage_metrics(idx, self.codebook_size))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embed[codes]
