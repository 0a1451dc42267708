"""VQ with a k-means (data) initialized EMA codebook, as in SoundStream: Zeghidour, Luebs, Omran,
Skoglund, Tagliasacchi, "SoundStream: An End-to-End Neural Audio Codec", 2021 (arXiv 2107.03312,
section III-C). SoundStream's code is not public; the reference implementation followed is
vector-quantize-pytorch (github.com/lucidrains/vector-quantize-pytorch, `kmeans_init=True`), whose
init EnCodec's (github.com/facebookresearch/encodec, core_vq.py) matches.

SoundStream trains its codebooks with EMA updates (VQ-VAE-2) and, "instead of using a random
initialization", runs k-means on the first training batch and uses the centroids as the initial
codebook. That is what this does: k-means init, then EMA (decay 0.99, Laplace-smoothed counts),
commitment 0.25. SoundStream's third ingredient, dead-code replacement, is `reset_vq`.

Deviations, both because our batches are small next to K:
- The init runs on the first training batches, buffered until they hold `init_multiple` x K vectors
  (4 by default), not on the first batch. EnCodec's first batch already holds a few times its
  K = 1,024 (64 one-second clips at 75 frames/s = 4,800 vectors); ours holds 1,024 tokens, and
  k-means on K points or fewer makes every point its own centre, which is a random-data init, not a
  clustering. The buffered vectors come from the first steps' encoders
  (up to 64 steps at K = 16,384), not from one encoder state.
- While buffering, the quantizer is plain nearest-code on its N(0, 1) init with the commitment
  loss, and the codebook does not move (EMA steps there would be overwritten by the init). The
  buffer is an ordinary attribute, not state: it is never saved, never decoded from, and dropped
  once k-means has run. A run too short to fill it keeps the random init (not the case in any task).
- Lloyd iterations: 10 (vector-quantize-pytorch's default; EnCodec uses 50), random-row seeding.
"""
import torch

from vqbench import Quantizer, QuantizerOutput
from vqbench.kmeans import quick_kmeans
from vqbench.ops import ema_codebook_update, nearest_code, straight_through, usage_metrics


class KMeansVQ(Quantizer):
    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, decay: float = 0.99,
                 eps: float = 1e-5, kmeans_iters: int = 10, init_multiple: int = 4):
        super().__init__(dim, codebook_size)
        self.beta, self.decay, self.eps, self.kmeans_iters = beta, decay, eps, kmeans_iters
        self.init_vectors = init_multiple * codebook_size  # k-means runs once this many are buffered
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
        # k-means on n <= K points returns the points themselves; with several points per centre it
        # clusters. Collect the first training batches (quantizing with the random init meanwhile)
        # until init_multiple x K vectors are buffered.
        self._seen.append(flat.clone())
        if sum(x.shape[0] for x in self._seen) < self.init_vectors:
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
