"""VQ with the rotation trick: Fifty, Junkins, Duan, Iyengar, Liu, Amid, Thrun, Ré, "Restructuring
Vector Quantization with the Rotation Trick", ICLR 2025 (arXiv 2410.06424); official code
github.com/cfifty/rotation_trick.

Same forward pass as `vq` (nearest code, codebook + commitment 0.25, uniform(-1/K, 1/K) init),
but the gradient reaches the encoder through q~ = sg[ |q| / |e| R ] e, where R is the rotation
taking e's direction to q's. The value is q; the gradient to e is rotated and rescaled like the
e -> q map instead of copied unchanged (straight-through), so it carries information about where
e sits relative to its code: points in the same cell get pushed apart or together depending on
the angle, which the paper shows raises codebook usage and lowers quantization error.

Deviation: everything but the gradient is `vq`'s (init, codebook loss), so the two isolate the
estimator; the paper's experiments use their own VQGAN / ViT-VQGAN configurations instead.
"""
import torch
import torch.nn.functional as F
from torch import nn

from vqbench import Quantizer, QuantizerOutput
from vqbench.ops import forward_as, nearest_code, uniform_init, usage_metrics, vq_loss


def rotate_to(e: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """sg[|q|/|e| R] e with R = I - 2 r r^T + 2 q^ e^T, r = (e^ + q^)/|e^ + q^| (paper eq. 4), applied
    as a product of vectors so no (d, d) matrix per token is built. Only e carries gradient."""
    e_norm = e.detach().norm(dim=-1, keepdim=True).clamp_min(eps)
    q_norm = q.detach().norm(dim=-1, keepdim=True).clamp_min(eps)
    e_hat, q_hat = e.detach() / e_norm, q.detach() / q_norm
    r = F.normalize(e_hat + q_hat, dim=-1)  # zero when e^ = -q^; R e = q^|e| still holds then
    rotated = e - 2 * r * (r * e).sum(-1, keepdim=True) + 2 * q_hat * (e_hat * e).sum(-1, keepdim=True)
    return (q_norm / e_norm) * rotated


class RotationVQ(Quantizer):
    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25):
        super().__init__(dim, codebook_size)
        self.beta = beta
        self.embed = nn.Parameter(uniform_init(codebook_size, dim))  # as `vq`, to isolate the gradient

    def codebook(self) -> torch.Tensor:
        return self.embed

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        idx, _ = nearest_code(z.detach(), self.embed.detach())
        q = self.embed[idx].view_as(z)
        loss = vq_loss(z, q, self.beta)
        # value exactly q (so eval decode(codes) == z_q bit for bit), gradient of the rotation
        z_q = forward_as(q, rotate_to(z, q))
        return QuantizerOutput(z_q, idx.view(z.shape[:-1]), loss, usage_metrics(idx, self.codebook_size))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embed[codes]
