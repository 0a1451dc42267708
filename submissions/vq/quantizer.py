"""VQ-VAE vector quantizer: van den Oord, Vinyals, Kavukcuoglu, "Neural Discrete Representation
Learning", NeurIPS 2017 (arXiv 1711.00937); official code: Sonnet, github.com/google-deepmind/sonnet
(sonnet/src/nets/vqvae.py, VectorQuantizer).

Nearest code, straight-through gradient to the encoder, codebook learned by gradient descent on
the codebook loss |sg[z] - e|^2 plus commitment beta |z - sg[e]|^2 (beta = 0.25, section 3.1).

Deviation: the init is uniform(-1/K, 1/K) (taming's VQGAN and the PyTorch ports), not Sonnet's
VarianceScaling-uniform (per-coordinate std 1/sqrt(dim)); see the comment in __init__.
"""
import torch
from torch import nn

from vqbench import Quantizer, QuantizerOutput
from vqbench.ops import nearest_code, straight_through, uniform_init, usage_metrics, vq_loss


class VQ(Quantizer):
    def __init__(self, dim: int, codebook_size: int, beta: float = 0.25):
        super().__init__(dim, codebook_size)
        self.beta = beta
        # uniform(-1/K, 1/K): the init of the reference PyTorch VQ-VAE code and of taming's VQGAN,
        # the most copied implementation. The codes start in a tiny ball around 0, so data that is
        # shifted/scaled away from 0 (the init-mismatch probe) lands on a handful of codes.
        self.embed = nn.Parameter(uniform_init(codebook_size, dim))

    def codebook(self) -> torch.Tensor:
        return self.embed

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        idx, _ = nearest_code(z.detach(), self.embed.detach())
        z_q = self.embed[idx].view_as(z)  # gather keeps the gradient path to the codebook
        loss = vq_loss(z, z_q, self.beta)
        return QuantizerOutput(straight_through(z, z_q), idx.view(z.shape[:-1]), loss,
                               usage_metrics(idx, self.codebook_size))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embed[codes]
