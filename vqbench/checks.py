"""The contract checks: what `vqbench validate` probes in a contained child, and what
tests/test_contract.py runs over every registered submission. Each check takes `build(seed)` (a
fresh quantizer), the code dimension and the task's K, returns a one-line detail, and raises
vqbench.enforce.JobFailure with the reason when the quantizer breaks the contract. The rules
themselves live in vqbench.enforce, the same code evaluation runs.
"""
from __future__ import annotations

import io
from typing import Callable

import torch

from vqbench.contract import Quantizer, QuantizerOutput, bits_per_token
from vqbench.enforce import JobFailure, check_output, check_rate, decode_table, max_difference
from vqbench.ops import code_index
from vqbench.submissions import Submission
from vqbench.train import seed_everything

Build = Callable[[int], Quantizer]  # seed -> a fresh quantizer


def _inputs(dim: int, seed: int, shape=(3, 5)) -> torch.Tensor:
    return torch.randn(*shape, dim, generator=torch.Generator().manual_seed(seed))


def _warm_up(q: Quantizer, dim: int, steps: int = 3) -> None:
    """A few training-mode forwards, so lazy initialisations (k-means, ...) have happened."""
    q.train()
    for step in range(steps):
        q.schedule(step, steps)
        q(_inputs(dim, 100 + step))


def _warmed_in_eval(build: Build, dim: int, k: int) -> tuple[Quantizer, int, int]:
    """A fresh quantizer after a few training steps, in eval mode, with its declared (size, depth)."""
    q = build(0)
    size, depth = check_rate(q, k)
    _warm_up(q, dim)
    q.eval()
    return q, size, depth


def _forward(q: Quantizer, z: torch.Tensor, size: int, depth: int, where: str) -> QuantizerOutput:
    return check_output(q(z), z, where, size, depth)


def check_rate_both_modes(build: Build, dim: int, k: int) -> str:
    q = build(0)
    size, depth = check_rate(q, k, "train mode: ")
    _warm_up(q, dim)
    q.eval()
    if check_rate(q, k, "eval mode: ") != (size, depth):
        raise JobFailure(f"codebook_size/depth change with eval(): {(size, depth)} -> {(q.codebook_size, q.depth)}")
    return f"{bits_per_token(size, depth):.2f} bits/token <= log2({k}) = {bits_per_token(k):.2f}"


def check_forward(build: Build, dim: int, k: int) -> str:
    q = build(0)
    size, depth = check_rate(q, k)
    _warm_up(q, dim)
    for mode in (True, False):
        q.train(mode)
        out = _forward(q, _inputs(dim, 1), size, depth, "train mode" if mode else "eval mode")
        loss = torch.as_tensor(out.loss)
        if loss.dim() != 0 or not torch.isfinite(loss):
            raise JobFailure(f"loss must be a finite scalar, got shape {tuple(loss.shape)} value {loss}")
    return f"codes {tuple(out.codes.shape)} int64 in [0, {size})"


def check_gradient(build: Build, dim: int, k: int) -> str:
    q = build(0)
    _warm_up(q, dim)
    q.train()
    z = _inputs(dim, 2).requires_grad_(True)
    # Through z_q alone: the task's decoder reads z_q, so that is the path the encoder learns by
    # (an auxiliary loss that also touches z does not count).
    q(z).z_q.square().sum().backward()
    if z.grad is None or not z.grad.abs().sum() > 0:
        raise JobFailure("no gradient reaches z through z_q (use a straight-through estimator or better)")
    return "z.grad from z_q is non-zero"


def check_decode_equals_zq(build: Build, dim: int, k: int) -> str:
    q, size, depth = _warmed_in_eval(build, dim, k)
    z = _inputs(dim, 3, (4, 7))
    with torch.no_grad():
        out = _forward(q, z, size, depth, "eval mode")
        if (diff := max_difference(q.decode(out.codes.clone()), out.z_q)) is not None:
            raise JobFailure(f"decode(codes) differs from z_q in eval mode (max difference {diff:.3g}); the harness "
                             "reconstructs from decode(codes) only")
        if not torch.equal(_forward(q, z, size, depth, "eval mode").codes, out.codes):
            raise JobFailure("eval-mode codes differ between two forwards of the same z")
    return "max difference within float rounding"


def check_decode_pure(build: Build, dim: int, k: int) -> str:
    """What evaluation relies on: every code tuple has one vector, whatever the order, batch or position."""
    q, size, depth = _warmed_in_eval(build, dim, k)
    with torch.no_grad():
        table = decode_table(q, size, depth, dim, torch.device("cpu"))
        gen = torch.Generator().manual_seed(4)
        codes = torch.randint(size, (4, 32) + ((depth,) if depth > 1 else ()), generator=gen)
        decoded = q.decode(codes.clone())
        perm = torch.randperm(4, generator=gen)
        if (diff := max_difference(q.decode(codes[perm].clone()), decoded[perm])) is not None:
            raise JobFailure(f"decode depends on batch order: decode(codes[perm]) != decode(codes)[perm] "
                             f"(max difference {diff:.3g})")
        if (diff := max_difference(decoded, table[code_index(codes, size, depth)])) is not None:
            distinct_codes = len(torch.unique(code_index(codes, size, depth)))
            distinct_vectors = len(torch.unique(decoded.reshape(-1, dim), dim=0))
            raise JobFailure(f"decode is not per-token: {distinct_codes} distinct codes decode to "
                             f"{distinct_vectors} distinct vectors (max difference {diff:.3g} from each code "
                             "decoded alone)")
    return f"{size ** depth} code tuples decoded twice, in two orders; batch order and position don't matter"


def check_decode_ignores_forward(build: Build, dim: int, k: int) -> str:
    """decode(codes) must not change after forward() sees other inputs: no cache of z can feed it."""
    q, size, depth = _warmed_in_eval(build, dim, k)
    with torch.no_grad():
        codes = _forward(q, _inputs(dim, 5), size, depth, "eval mode").codes
        before = q.decode(codes.clone())
        q(_inputs(dim, 6))
        if (diff := max_difference(q.decode(codes.clone()), before)) is not None:
            raise JobFailure(f"decode(codes) changed after forward() saw other inputs (max difference {diff:.3g}): "
                             "decode must depend on codes and trained weights only")
    return "same codes, same vectors after other forwards"


EDGE_INPUTS = {
    "zeros": lambda dim: torch.zeros(2, 4, dim),
    "large": lambda dim: 1e3 * _inputs(dim, 7, (2, 4)),
    "batch1": lambda dim: _inputs(dim, 8, (1, 4)),
    "token1": lambda dim: _inputs(dim, 9, (2, 1)),
    "batch1_token1": lambda dim: _inputs(dim, 10, (1, 1)),
}


def check_edge_input(build: Build, dim: int, k: int, case: str) -> None:
    q = build(0)
    size, depth = check_rate(q, k)
    z = EDGE_INPUTS[case](dim)
    for mode in (True, False):
        q.train(mode)
        where = f"{case} input, {'train' if mode else 'eval'} mode"
        out = _forward(q, z, size, depth, where)
        if not (torch.isfinite(out.z_q).all() and torch.isfinite(torch.as_tensor(out.loss)).all()):
            raise JobFailure(f"{where}: z_q or loss is not finite")
        if not torch.isfinite(q.decode(out.codes.clone())).all():
            raise JobFailure(f"{where}: decode(codes) is not finite")


def check_edge_inputs(build: Build, dim: int, k: int) -> str:
    for case in EDGE_INPUTS:
        check_edge_input(build, dim, k, case)
    return ", ".join(EDGE_INPUTS)


def check_seeded(build: Build, dim: int, k: int) -> str:
    outs = []
    for _ in range(2):
        q = build(3)
        torch.manual_seed(0)  # train-mode sampling (Gumbel, restarts) must follow the global seed
        _warm_up(q, dim)
        q.eval()
        with torch.no_grad():
            outs.append(q(_inputs(dim, 11)))
    if not (torch.equal(outs[0].codes, outs[1].codes) and torch.equal(outs[0].z_q, outs[1].z_q)):
        raise JobFailure("two quantizers built and trained under the same seed give different codes or z_q")
    return "same seed, same codes and z_q"


def check_state_dict(build: Build, dim: int, k: int) -> str:
    a = build(3)
    _warm_up(a, dim)
    a.eval()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = build(99)
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    b.eval()
    z = _inputs(dim, 12)
    with torch.no_grad():
        out_a, out_b = a(z), b(z)
        if not torch.equal(out_a.codes, out_b.codes) or max_difference(out_a.z_q, out_b.z_q) is not None:
            raise JobFailure("a quantizer loaded from another's state_dict quantizes differently: keep all state "
                             "in parameters and registered buffers")
        if max_difference(a.decode(out_a.codes.clone()), b.decode(out_a.codes.clone())) is not None:
            raise JobFailure("a quantizer loaded from another's state_dict decodes differently")
    return "loaded copy quantizes and decodes identically"


def check_codebook(build: Build, dim: int, k: int) -> str:
    q = build(0)
    book = q.codebook()
    if book is None:
        return "no explicit codebook (optional)"
    if not isinstance(book, torch.Tensor) or book.dim() != 2 or book.shape[1] != dim \
            or book.shape[0] > k * max(1, q.depth):
        raise JobFailure(f"codebook() must be (at most K x depth, {dim}), got {tuple(getattr(book, 'shape', ()))}")
    return f"codebook {tuple(book.shape)}"


CONTRACT_CHECKS: list[tuple[str, Callable[[Build, int, int], str]]] = [
    ("rate: depth x log2(codebook_size) within log2(K), in train and eval mode", check_rate_both_modes),
    ("forward: z_q shape, int64 codes in [0, codebook_size), finite scalar loss", check_forward),
    ("gradient reaches z", check_gradient),
    ("decode(codes) equals z_q in eval mode", check_decode_equals_zq),
    ("decode is a pure, per-token function of codes", check_decode_pure),
    ("decode ignores what forward() saw (no cached z)", check_decode_ignores_forward),
    ("edge inputs stay finite", check_edge_inputs),
    ("deterministic under a seed", check_seeded),
    ("state_dict round trip", check_state_dict),
    ("codebook() shape", check_codebook),
]


def builder(submission: Submission, dim: int, k: int) -> Build:
    def build(seed: int) -> Quantizer:
        seed_everything(seed)
        return submission.build(dim, k)
    return build
