"""The training loop and evaluation every task shares; the task owns the budget, not the submission.

Rate is enforced at evaluation, where a leak would score:
- the decode table (the vector of every code, or code tuple) is computed from a frozen copy of the
  trained quantizer *before* the eval pass sees any data, twice in different orders (decode must
  be a pure function of codes); the reconstruction is `table[codes]`, so nothing a quantizer keeps
  from eval inputs (its own state, class-level or global caches, files) can reach it;
- every eval batch's `decode(codes)` must still equal the table (a decode that changes with what
  forward() saw is reported, not silently ignored) and `z_q` must equal it (no pass-through);
- codes must be plain int64 tensors in [0, K) of the sizes frozen before the eval pass, and
  depth x log2(K) within the task's budget there too (a quantizer cannot widen its rate in eval()).
"""
from __future__ import annotations

import copy
import math
import random
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from vqbench.contract import Quantizer, QuantizerOutput
from vqbench.families import Setup
from vqbench.metrics import METRICS, CodeUsage, LatentRank, MetricUnavailable, QuantizationError, effective_rank
from vqbench.ops import code_index, index_codes

TABLE_CHUNK = 1 << 14  # code tuples per decode() call when building the decode table
SAME_RTOL = 1e-5  # "same vectors": max |a - b| <= SAME_RTOL * (1 + max |a|, |b|); float32 rounding is ~1e-7


class JobFailure(RuntimeError):
    """A submission misbehaved (NaN, bad codes, wrong shapes): the job fails with this reason."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_rate(quantizer: Quantizer, budget_codebook_size: int, where: str = "") -> tuple[int, int]:
    """(codebook_size, depth) the quantizer declares, after checking depth x log2(K) fits the budget."""
    size, depth = quantizer.codebook_size, quantizer.depth
    if not (type(size) is int and size >= 2 and type(depth) is int and depth >= 1):
        raise JobFailure(f"{where}codebook_size and depth must be ints >= 2 and >= 1, got {size!r} and {depth!r}")
    bits, budget = depth * math.log2(size), math.log2(budget_codebook_size)
    if bits > budget + 1e-9:
        raise JobFailure(f"{where}rate budget exceeded: {bits:.3f} bits/token > log2(K) = {budget:.3f} "
                         f"(depth {depth} x codebook {size})")
    return size, depth


def check_output(out: object, z: Tensor, where: str, codebook_size: int, depth: int) -> QuantizerOutput:
    if not isinstance(out, QuantizerOutput):
        raise JobFailure(f"{where}: forward() returned {type(out).__name__}, not QuantizerOutput")
    if type(out.z_q) is not Tensor:  # a Tensor subclass could change what indexing or comparison does
        raise JobFailure(f"{where}: z_q must be a torch.Tensor, got {type(out.z_q).__name__}")
    if out.z_q.shape != z.shape:
        raise JobFailure(f"{where}: z_q has shape {tuple(out.z_q.shape)}, expected {tuple(z.shape)}")
    check_codes(out.codes, z, where, codebook_size, depth)
    return out


def check_codes(codes: Tensor, z: Tensor, where: str, codebook_size: int, depth: int) -> None:
    expected = tuple(z.shape[:2]) + ((depth,) if depth > 1 else ())
    if type(codes) is not Tensor or codes.dtype != torch.int64:
        raise JobFailure(f"{where}: codes must be an int64 tensor, got {getattr(codes, 'dtype', type(codes).__name__)}")
    if tuple(codes.shape) != expected:
        raise JobFailure(f"{where}: codes have shape {tuple(codes.shape)}, expected {expected}")
    if codes.numel() and (codes.min() < 0 or codes.max() >= codebook_size):
        raise JobFailure(f"{where}: codes outside [0, {codebook_size}): "
                         f"min {int(codes.min())}, max {int(codes.max())}")


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
def decode_table(q: Quantizer, codebook_size: int, depth: int, dim: int, device) -> Tensor:
    """The (K^depth, dim) vector of every code tuple, decoded twice (in order, then shuffled in other
    chunk sizes): decode must be a pure, per-token function of codes."""
    n = codebook_size ** depth
    index = torch.arange(n, device=device)
    table = _decode_many(q, index, codebook_size, depth, dim, TABLE_CHUNK)
    if not torch.isfinite(table).all():
        raise JobFailure("decode(codes) returns non-finite vectors for some codes")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(n)).to(device)
    again = _decode_many(q, perm, codebook_size, depth, dim, max(1, TABLE_CHUNK // 3 - 1))
    if (diff := max_difference(again, table[perm])) is not None:
        raise JobFailure(f"decode(codes) is not a pure function of codes: the same codes decoded in another "
                         f"order or batch give other vectors (max difference {diff:.3g})")
    return table


def train(setup: Setup, quantizer: Quantizer, task, on_step: Callable[[int], None] | None = None) -> dict:
    spec = task.train
    modules = [setup.encoder, setup.decoder, quantizer]
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if spec.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=spec.lr, weight_decay=spec.weight_decay) if params else None
    for m in modules:
        m.train()
    device = next((p.device for p in params), torch.device("cpu"))
    use_amp = spec.amp and device.type == "cuda"
    curve = []
    for step in range(spec.steps):
        quantizer.schedule(step, spec.steps)
        x = next(setup.train_batches)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            z = setup.encoder(x)
            out = check_output(quantizer(z), z, f"training step {step}", quantizer.codebook_size, quantizer.depth)
            x_hat = setup.decoder(out.z_q)
            recon = setup.reconstruction_loss(x_hat.float(), x)
            loss = recon + out.loss
        if not torch.isfinite(loss):
            raise JobFailure(f"non-finite loss at training step {step}: reconstruction {float(recon.detach()):.4g}, "
                             f"quantizer loss {float(torch.as_tensor(out.loss).detach()):.4g}")
        if optimizer is not None and loss.requires_grad:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if spec.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
            optimizer.step()
        if step % max(1, spec.steps // 20) == 0 or step == spec.steps - 1:
            curve.append([step, float(recon.detach())])
        if on_step:
            on_step(step)
    return {"loss_curve": curve, "final_reconstruction_loss": curve[-1][1] if curve else None}


@torch.no_grad()
def evaluate(setup: Setup, quantizer: Quantizer, task) -> tuple[dict[str, float | None], dict[str, str]]:
    """Metrics, and {metric: reason} for those that could not be computed."""
    for m in (setup.encoder, setup.decoder, quantizer):
        m.eval()
    decoder_copy = copy.deepcopy(quantizer)  # decode() sees trained weights, not forward()'s state
    size, depth = check_rate(decoder_copy, task.quantizer.codebook_size, "evaluation: ")  # frozen here
    dim = task.quantizer.dim
    device = next((t.device for t in (*decoder_copy.parameters(), *decoder_copy.buffers())), torch.device("cpu"))
    table = decode_table(decoder_copy, size, depth, dim, device)  # before any eval input exists
    usage = CodeUsage(size, depth)
    latent_rank, qerr = LatentRank(dim), QuantizationError(dim)
    for x in setup.eval_batches():
        z = setup.encoder(x)
        out = check_output(quantizer(z), z, "evaluation", size, depth)
        z_hat = table[code_index(out.codes, size, depth)].to(z.device)
        if (diff := max_difference(decoder_copy.decode(out.codes.clone()), z_hat)) is not None:
            raise JobFailure(f"evaluation: decode(codes) changed after the eval pass began (max difference "
                             f"{diff:.3g} from the same codes decoded before it): decode must depend on "
                             "codes and trained weights only, not on what forward() saw")
        if (diff := max_difference(out.z_q, z_hat)) is not None:
            raise JobFailure(f"evaluation: z_q differs from decode(codes) in eval mode (max difference "
                             f"{diff:.3g}): z_q must be the decoded code vectors, not a pass-through of z")
        x_hat = setup.decoder(z_hat.to(z.dtype))
        usage.update(out.codes.cpu())
        latent_rank.update(z.float().cpu())
        qerr.update(z.float().cpu(), z_hat.float().cpu())
        for name in task.metrics:  # only what the task asks for: rFID is not free
            setup.fidelity_metrics[name].update(x_hat.float(), x)
    metrics = dict(usage.compute())
    book = decoder_copy.codebook()
    metrics["codebook_rank"] = effective_rank(book) if book is not None else None
    metrics["latent_rank"] = latent_rank.compute()
    metrics["quantization_error"] = qerr.compute()
    unavailable = {}
    for name in task.metrics:
        try:
            value = setup.fidelity_metrics[name].compute()
        except MetricUnavailable as e:  # missing weights: say so, never substitute a number
            metrics[name], unavailable[name] = None, str(e)
            continue
        metrics.update(value if isinstance(value, dict) else {name: value})
    for name, value in list(metrics.items()):
        if value == math.inf and METRICS[name].higher_is_better:  # e.g. PSNR of an exact reconstruction
            metrics[name], unavailable[name] = None, "infinite: the reconstruction is exact"
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise JobFailure(f"non-finite metrics at evaluation: {', '.join(bad)}")
    return metrics, unavailable
