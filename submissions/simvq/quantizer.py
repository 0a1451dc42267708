"""SimVQ: Zhu, Li, Xin, Xia, Xu, "Addressing Representation Collapse in Vector Quantized Models
with One Linear Layer", ICCV 2025 (arXiv 2411.02038); official code github.com/youngsheen/SimVQ
(taming/modules/vqvae/quantize.py).

The codebook is reparameterized as W(C): C (K, dim) is a frozen random basis and W a learnable
linear layer. Gradients of the codebook loss update W, which moves the whole codebook at once
(every code, chosen or not), so codes cannot die one by one and the codebook spans the latent
space instead of collapsing into a low-dimensional subspace.

Deviations: none in the quantizer (C ~ N(0, 1/dim) frozen, W a biased nn.Linear, codebook loss +
0.25 commitment, the reference's legacy=False branch). The code dimension is the task's `dim`.
"""
import torch
from torch import nn

from vqbench import Quantizer, QuantizerOutput
from vqbench.ops import nearest_code, straight_through, usage_metrics, vq_loss


class SimVQ(Quantizer):
    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25):
        super().__init__(dim, codebook_size)
        self.beta = beta
        # Frozen basis C ~ N(0, dim^-1), as in the paper's reference code; a buffer, so it follows
        # .to(device) and is saved, but no optimizer ever sees it.
        self.register_buffer("basis", torch.randn(codebook_size, dim) * dim ** -0.5)
        self.proj = nn.Linear(dim, dim)  # W, with bias, default nn.Linear init (reference code)

    def codebook(self) -> torch.Tensor:
        return self.proj(self.basis)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        codebook = self.codebook()
        idx, _ = nearest_code(z.detach(), codebook.detach())
        z_q = codebook[idx].view_as(z)
        # Codebook loss (reaches W) + 0.25 commitment: the paper's loss, i.e. the reference code's
        # legacy=False branch, which its released configs use (legacy=True swaps the two weights).
        loss = vq_loss(z, z_q, self.beta)
        return QuantizerOutput(straight_through(z, z_q), idx.view(z.shape[:-1]), loss,
                               usage_metrics(idx, self.codebook_size))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.codebook()[codes]
