"""The rules a quantizer's outputs must obey, enforced by the job's stages (vqbench.stages)
and probed by `vqbench validate` (vqbench.checks): one home for both.

- rate: depth x log2(codebook_size) within log2(K) of the task, read back from the quantizer;
- outputs: a QuantizerOutput whose z_q has z's shape and whose codes are plain int64 tensors of the
  declared shape in [0, codebook_size);
- the decode table: the (codebook_size^depth, dim) vector of every code tuple, decoded twice in
  different orders and chunk sizes from a frozen copy before any eval input exists (decode must be
  a pure, per-token function of codes); the reconstruction is this table indexed by the eval codes.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from vqbench.contract import Quantizer, QuantizerOutput, bits_per_token
from vqbench.ops import index_codes

TABLE_CHUNK = 1 << 14  # code tuples per decode() call when building the decode table
SAME_RTOL = 1e-5  # "same vectors": max |a - b| <= SAME_RTOL * (1 + max |a|, |b|); float32 rounding is ~1e-7


class JobFailure(RuntimeError):
    """A submission misbehaved (NaN, bad codes, wrong shapes): the job fails with this reason."""


def check_rate(quantizer: Quantizer, budget_codebook_size: int, where: str = "") -> tuple[int, int]:
    """(codebook_size, depth) the quantizer declares, after checking depth x log2(K) fits the budget."""
    size, depth = quantizer.codebook_size, quantizer.depth
    if not (type(size) is int and size >= 2 and type(depth) is int and depth >= 1):
        raise JobFailure(f"{where}codebook_size and depth must be ints >= 2 and >= 1, got {size!r} and {depth!r}")
    bits, budget = bits_per_token(size, depth), bits_per_token(budget_codebook_size)
    if bits > budget + 1e-9:
        raise JobFailure(f"{where}rate budget exceeded: {bits:.3f} bits/token > log2(K) = {budget:.3f} "
                         f"(depth {depth} x codebook {size})")
    return size, depth


def check_output(out: object, z: Tensor, where: str, codebook_size: int, depth: int,
                 check_range: bool = True) -> QuantizerOutput:
    """`check_range=False` leaves the codes' range to the caller: reading min and max makes the host
    wait for the device, and the training loop checks it without that (vqbench.train.StepChecks)."""
    if not isinstance(out, QuantizerOutput):
        raise JobFailure(f"{where}: forward() returned {type(out).__name__}, not QuantizerOutput")
    if type(out.z_q) is not Tensor:  # a Tensor subclass could change what indexing or comparison does
        raise JobFailure(f"{where}: z_q must be a torch.Tensor, got {type(out.z_q).__name__}")
    if out.z_q.shape != z.shape:
        raise JobFailure(f"{where}: z_q has shape {tuple(out.z_q.shape)}, expected {tuple(z.shape)}")
    check_codes(out.codes, z, where, codebook_size, depth, check_range)
    return out


def check_codes(codes: Tensor, z: Tensor, where: str, codebook_size: int, depth: int,
                check_range: bool = True) -> None:
    expected = tuple(z.shape[:2]) + ((depth,) if depth > 1 else ())
    if type(codes) is not Tensor or codes.dtype != torch.int64:
        raise JobFailure(f"{where}: codes must be an int64 tensor, got {getattr(codes, 'dtype', type(codes).__name__)}")
    if tuple(codes.shape) != expected:
        raise JobFailure(f"{where}: codes have shape {tuple(codes.shape)}, expected {expected}")
    if check_range and codes.numel() and (codes.min() < 0 or codes.max() >= codebook_size):
        raise codes_outside(where, codebook_size, int(codes.min()), int(codes.max()))


def codes_outside(where: str, codebook_size: int, low: int, high: int) -> JobFailure:
    return JobFailure(f"{where}: codes outside [0, {codebook_size}): min {low}, max {high}")


def max_difference(a: Tensor, b: Tensor) -> float | None:
    """max |a - b| when it exceeds float rounding at their scale (or shapes differ: inf), else None."""
    if a.shape != b.shape:
        return math.inf
    if not a.numel():
        return None
    a, b = a.detach().float(), b.detach().float()
    diff = float((a - b).abs().max())
    scale = max(float(a.abs().max()), float(b.abs().max()))
    return None if diff <= SAME_RTOL * (1 + scale) else diff


def _decode_many(q: Quantizer, index: Tensor, codebook_size: int, depth: int, dim: int, chunk: int) -> Tensor:
    parts = []
    for piece in index.split(chunk):
        codes = piece.view(-1, 1) if depth == 1 else index_codes(piece, codebook_size, depth).view(-1, 1, depth)
        out = q.decode(codes)  # n one-token sequences
        if type(out) is not Tensor or tuple(out.shape) != (len(piece), 1, dim):
            raise JobFailure(f"decode(codes) of shape {(len(piece), 1)} returned "
                             f"{tuple(getattr(out, 'shape', ())) or type(out).__name__}, expected {(len(piece), 1, dim)}")
        parts.append(out.reshape(len(piece), dim))
    return torch.cat(parts)


@torch.no_grad()
def decode_tuples(q: Quantizer, index: Tensor, codebook_size: int, depth: int, dim: int) -> Tensor:
    """The vectors of the joint code tuples `index` (see vqbench.ops.code_index), decoded twice (in
    order, then shuffled in other chunk sizes): decode must be a pure, per-token function of codes."""
    vectors = _decode_many(q, index, codebook_size, depth, dim, TABLE_CHUNK)
    if not torch.isfinite(vectors).all():
        raise JobFailure("decode(codes) returns non-finite vectors for some codes")
    perm = torch.randperm(len(index), generator=torch.Generator().manual_seed(len(index))).to(index.device)
    again = _decode_many(q, index[perm], codebook_size, depth, dim, max(1, TABLE_CHUNK // 3 - 1))
    if (diff := max_difference(again, vectors[perm])) is not None:
        raise JobFailure(f"decode(codes) is not a pure function of codes: the same codes decoded in another "
                         f"order or batch give other vectors (max difference {diff:.3g})")
    return vectors


def decode_table(q: Quantizer, codebook_size: int, depth: int, dim: int, device) -> Tensor:
    """The (K^depth, dim) vector of every code tuple (row i is joint code i), decoded twice."""
    return decode_tuples(q, torch.arange(codebook_size ** depth, device=device), codebook_size, depth, dim)
