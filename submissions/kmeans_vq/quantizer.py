"""VQ with a k-means (data) initialized EMA codebook, as in SoundStream: Zeghidour, Luebs, Omran,
Skoglund, Tagliasacchi, "SoundStream: An End-to-End Neural Audio Codec", 2021 (arXiv 2107.03312,
section III-C).

SoundStream trains its codebooks with EMA updates (VQ-VAE-2) and, "instead of using a random
initialization", runs k-means on the first training batch and uses the centroids as the initial
codebook. That is what this does: k-means init, then EMA (decay 0.99, Laplace-smoothed counts),
commitment 0.25. SoundStream's third ingredient, dead-code replacement, is `reset_vq`.
"""
import torch

from vqbench import Quantizer, QuantizerOutput
from vqbench.kmeans import quick_kmeans
from vqbench.ops import ema_codebook_update, nearest_code, straight_through, usage_metrics


class KMeansVQ(Quantizer):
    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, decay: float = 0.99,
                 eps: float = 1e-5, kmeans_iters: int = 10):
        super().__init__(dim, codebook_size)
        self.beta, self.decay, self.eps, self.kmeans_iters = beta, decay, eps, kmeans_iters
        embed = torch.randn(codebook_size, dim)  # only used (in eval) if the model was never trained
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", embed.clone())
        self.register_buffer("initialized", torch.tensor(False))
        self._seen: list[torch.Tensor] = []  # training latents buffered until k-means can run

    def codebook(self) -> torch.Tensor:
        return self.embed

    @torch.no_grad()
    def _maybe_init(self, flat: torch.Tensor) -> bool:
        # k-means needs at least K points or some centroids are duplicates (dead on arrival). When a
        # batch has fewer than K vectors (large K, small batches) we keep collecting the first
        # training batches, quantizing with the random init meanwhile, until K vectors are seen.
        self._seen.append(flat)
        if sum(x.shape[0] for x in self._seen) < self.codebook_size:
            return False
        centroids = quick_kmeans(torch.cat(self._seen), self.codebook_size, self.kmeans_iters)
        self._seen.clear()
        self.embed.copy_(centroids)
        self.embed_sum.copy_(centroids)
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)
        return True

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        flat = z.detach().reshape(-1, self.dim)
        # the batch that completes k-means is quantized with the fresh centroids and gets no EMA
        # step (k-means already fit it), so the codebook after it is exactly the centroids
        just_initialized = self.training and not bool(self.initialized) and self._maybe_init(flat)
        idx, _ = nearest_code(flat, self.embed)
        z_q = self.embed[idx].view_as(z)
        loss = self.beta * torch.nn.functional.mse_loss(z, z_q)
        if self.training and bool(self.initialized) and not just_initialized:
            self.embed.copy_(ema_codebook_update(self.cluster_size, self.embed_sum, flat, idx, self.decay, self.eps))
        return QuantizerOutput(straight_through(z, z_q), idx.view(z.shape[:-1]), loss,
                               usage_metrics(idx, self.codebook_size))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embed[codes]
