"""CVQ-VAE, online clustered codebook: Zheng, Vedaldi, "Online Clustered Codebook", ICCV 2023
(arXiv 2307.15139); official code github.com/lyndonzheng/CVQ-VAE (quantise.py, VectorQuantiser).

A VQ-VAE (codebook + commitment 0.25, uniform(-1/K, 1/K) init) whose under-used codes are pulled
toward anchors sampled from the current encoder outputs, instead of waiting for gradients that
never come. Each training step, with p_k the EMA (decay 0.99) of code k's share of the batch:

    alpha_k = exp(-p_k K 10 / (1 - decay) - 1e-3),     e_k <- (1 - alpha_k) e_k + alpha_k a_k

so a dead code (p_k ~ 0) jumps almost entirely to its anchor a_k while a code used at its fair
share 1/K is left untouched (alpha ~ e^-1000). Anchors are "closest": for each code, the batch
feature most similar to it. Lookup uses cosine distance, the reference code's and README's
setting (the released training command: --distance cos --anchor closest).

Deviation: the optional contrastive loss (`contras_loss`, off by default in the reference) is
omitted. Everything else follows VectorQuantiser with distance='cos', anchor='closest'.
"""
import torch
import torch.nn.functional as F
from torch import nn

from vqbench import Quantizer, QuantizerOutput
from vqbench.ops import nearest_code, straight_through, uniform_init, usage_metrics, vq_loss


class CVQ(Quantizer):
    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25, decay: float = 0.99):
        super().__init__(dim, codebook_size)
        self.beta, self.decay = beta, decay
        self.embed = nn.Parameter(uniform_init(codebook_size, dim))
        self.register_buffer("usage", torch.zeros(codebook_size))  # EMA of each code's batch share

    def codebook(self) -> torch.Tensor:
        return self.embed

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        flat = z.detach().reshape(-1, self.dim)
        # cosine nearest code = Euclidean nearest code between unit vectors
        z_unit, code_unit = F.normalize(flat, dim=1), F.normalize(self.embed.detach(), dim=1)
        idx, _ = nearest_code(z_unit, code_unit)
        z_q = self.embed[idx].view_as(z)  # the code itself, not its unit vector
        loss = vq_loss(z, z_q, self.beta)
        if self.training:
            with torch.no_grad():
                share = torch.bincount(idx, minlength=self.codebook_size).to(self.usage.dtype) / idx.numel()
                self.usage.mul_(self.decay).add_(share, alpha=1 - self.decay)
                anchors = flat[nearest_code(code_unit, z_unit)[0]]  # per code, its most similar feature
                alpha = torch.exp(-self.usage * self.codebook_size * 10 / (1 - self.decay) - 1e-3).unsqueeze(1)
                # in place on the parameter, after z_q was gathered: this step's output is unchanged
                self.embed.mul_(1 - alpha).add_(alpha * anchors.to(self.embed.dtype))
        return QuantizerOutput(straight_through(z, z_q), idx.view(z.shape[:-1]), loss,
                               usage_metrics(idx, self.codebook_size))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embed[codes]
