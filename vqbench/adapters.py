"""Adapters that let a submission.yaml use a quantizer from an external library unchanged.

    entrypoint: vqbench.adapters:VectorQuantizePytorch
    params: {class: FSQ, kwargs: {...}}
    requires: [vector_quantize_pytorch==1.32.0]   # pinned: the version is part of the submission hash

wraps lucidrains' vector-quantize-pytorch (https://github.com/lucidrains/vector-quantize-pytorch;
tested with 1.32.0). Its classes return differently shaped tuples and decode through differently
named methods; the adapter maps each onto the Quantizer contract and sizes it to the task the
way the zoo does: FSQ levels from vqbench.ops.fsq_levels (prod <= K), LFQ with floor(log2 K) bits,
ResidualVQ with `num_quantizers` levels of K^(1/depth) codes.
"""
from __future__ import annotations

import importlib
import math

import torch
from torch import Tensor

from vqbench.contract import Quantizer, QuantizerOutput
from vqbench.ops import forward_as, fsq_levels, joint_codes, usage_metrics

SUPPORTED = ("VectorQuantize", "FSQ", "LFQ", "ResidualVQ", "SimVQ")


class VectorQuantizePytorch(Quantizer):
    """A vector-quantize-pytorch module behind the Quantizer contract.

    params: `class` (one of SUPPORTED) and `kwargs` passed to its constructor after the sizes
    (dim, codebook_size / levels / num_quantizers) that the adapter derives from the task.
    """

    def __init__(self, dim: int, codebook_size: int, **params):
        name = params.pop("class", None)
        kwargs = dict(params.pop("kwargs", None) or {})
        super().__init__(dim, codebook_size, **params)  # rejects any other key
        if name not in SUPPORTED:
            raise ValueError(f"class must be one of {', '.join(SUPPORTED)}, got {name!r}")
        cls = getattr(importlib.import_module("vector_quantize_pytorch"), name)
        self.kind = name
        if name == "FSQ":
            levels = kwargs.pop("levels", None) or fsq_levels(codebook_size)
            self.codebook_size = math.prod(levels)
            self.module = cls(levels=levels, dim=dim, **kwargs)
        elif name == "LFQ":
            self.codebook_size = 2 ** max(int(math.log2(codebook_size)), 1)
            self.module = cls(dim=dim, codebook_size=self.codebook_size, **kwargs)
        elif name == "ResidualVQ":
            self.depth = kwargs.pop("num_quantizers", 2)
            self.codebook_size = 2 ** (int(math.log2(codebook_size)) // self.depth)
            self.module = cls(dim=dim, codebook_size=self.codebook_size, num_quantizers=self.depth, **kwargs)
        else:  # VectorQuantize, SimVQ
            self.module = cls(dim=dim, codebook_size=codebook_size, **kwargs)
        if self.codebook_size > codebook_size:
            raise ValueError(f"{name} would emit {self.codebook_size} codes > codebook_size {codebook_size}")

    def forward(self, z: Tensor) -> QuantizerOutput:
        # The libraries treat dim 1 as the sequence; a task with one token per item (synthetic) would
        # hand SimVQ `batch` separate one-row distance problems (~30x slower). Every token is scored
        # on its own and batch statistics pool all tokens either way, so one sequence is the same maths.
        out = self.module(z.reshape(1, -1, z.shape[-1]))
        z_q = out[0].reshape(z.shape)
        codes = out[1].long().reshape(*z.shape[:-1], *out[1].shape[2:])
        # FSQ returns no loss; the others a scalar, ResidualVQ one per level; extra entries
        # (loss breakdowns, all codes) are ignored
        loss = out[2].sum() if len(out) > 2 and torch.is_tensor(out[2]) else torch.zeros((), device=z.device)
        if not self.training:
            # the libraries' straight-through / rotation outputs equal decode(codes) only up to
            # rounding; the harness reconstructs from decode(codes), so return exactly that
            z_q = forward_as(self.decode(codes), z_q)
        symbols = codes if self.depth == 1 else (codes * self.codebook_size ** torch.arange(self.depth, device=codes.device)).sum(-1)
        return QuantizerOutput(z_q, codes, loss, usage_metrics(symbols, self.codebook_size ** self.depth))

    def decode(self, codes: Tensor) -> Tensor:
        if self.kind in ("VectorQuantize", "ResidualVQ"):
            return self.module.get_output_from_indices(codes)
        return self.module.indices_to_codes(codes)

    @torch.no_grad()
    def codebook(self) -> Tensor:
        """Every reachable output vector: decode of all codes (all code tuples for ResidualVQ)."""
        device = next(self.parameters(), next(self.buffers(), torch.empty(0))).device
        codes = joint_codes(self.codebook_size, self.depth, device)  # (N, depth)
        codes = codes[:, 0] if self.depth == 1 else codes
        return self.decode(codes.unsqueeze(0))[0]  # the libraries expect a batch dimension
