"""The one API a submission implements: `Quantizer` and its `QuantizerOutput`.

The harness owns everything around the quantizer (encoder, decoder, data, optimizer, budget);
a submission changes only this layer, so results are comparable across submissions.

Rate is enforced, not trusted: at evaluation the harness reconstructs from `decode(codes)`
alone, never from `z_q`, so a quantizer that leaks continuous information cannot score.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

# What a submission may import from the harness (vqbench validate refuses any other vqbench module):
# the contract, shared kernels, the k-means helper and the adapters for external libraries.
PUBLIC_MODULES = ("vqbench", "vqbench.contract", "vqbench.ops", "vqbench.kmeans", "vqbench.adapters")


def bits_per_token(codebook_size: int, depth: int = 1) -> float:
    """The rate of a token: depth code levels of log2(codebook_size) bits each."""
    return depth * math.log2(codebook_size)


@dataclass
class QuantizerOutput:
    z_q: Tensor  # (batch, tokens, dim), with a gradient path to z (straight-through or better)
    codes: Tensor  # (batch, tokens) or (batch, tokens, depth), int64 in [0, codebook_size)
    loss: Tensor | float = 0.0  # scalar auxiliary loss (commitment, entropy, ...)
    metrics: dict[str, float] = field(default_factory=dict)  # optional; logged in the result's train.quantizer_log


class Quantizer(torch.nn.Module, abc.ABC):
    """Base class for submissions.

    Subclasses call `super().__init__(dim, codebook_size)` and may then overwrite
    `self.codebook_size` and `self.depth` with what they really emit (e.g. FSQ uses the product
    of its levels, residual VQ uses `depth` levels of a smaller codebook): the harness reads them
    back to compute bits per token and the emitted codes (codebook_size^depth) and checks them
    against the task's budget. Code usage is normalized by the task's K, not by them.

    A task with several levels (`quantizer.levels`) builds one instance per level, each with that
    level's K, in one process: state belongs to the instance, never to the class or the module.
    """

    def __init__(self, dim: int, codebook_size: int, **params):
        super().__init__()
        if params:
            raise TypeError(f"{type(self).__name__} got unexpected params: {sorted(params)}")
        self.dim = int(dim)
        self.codebook_size = int(codebook_size)  # codes per level
        self.depth = 1  # code levels per token (residual / product quantizers emit several)

    @property
    def bits_per_token(self) -> float:
        return bits_per_token(self.codebook_size, self.depth)

    @abc.abstractmethod
    def forward(self, z: Tensor) -> QuantizerOutput:
        """z: (batch, tokens, dim) -> QuantizerOutput."""

    @abc.abstractmethod
    def decode(self, codes: Tensor) -> Tensor:
        """codes -> (batch, tokens, dim); deterministic, and equal to z_q in eval mode."""

    def schedule(self, step: int, total_steps: int) -> None:
        """Called by the training loop before every step; override to anneal."""

    def codebook(self) -> Tensor | None:
        """Effective (K, dim) code vectors, when the quantizer has an explicit codebook."""
        return None
