"""The training loop and evaluation every task shares; the task owns the budget, not the submission.

Evaluation reconstructs from `decode(codes)` of a frozen copy of the trained quantizer, never from
`z_q`: whatever a quantizer keeps from its forward pass cannot reach the reconstruction.
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


class JobFailure(RuntimeError):
    """A submission misbehaved (NaN, bad codes, wrong shapes): the job fails with this reason."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_output(out: object, z: Tensor, quantizer: Quantizer, where: str) -> QuantizerOutput:
    if not isinstance(out, QuantizerOutput):
        raise JobFailure(f"{where}: forward() returned {type(out).__name__}, not QuantizerOutput")
    if out.z_q.shape != z.shape:
        raise JobFailure(f"{where}: z_q has shape {tuple(out.z_q.shape)}, expected {tuple(z.shape)}")
    check_codes(out.codes, z, quantizer, where)
    return out


def check_codes(codes: Tensor, z: Tensor, quantizer: Quantizer, where: str) -> None:
    expected = tuple(z.shape[:2]) + ((quantizer.depth,) if quantizer.depth > 1 else ())
    if not isinstance(codes, Tensor) or codes.dtype != torch.int64:
        raise JobFailure(f"{where}: codes must be an int64 tensor, got {getattr(codes, 'dtype', type(codes))}")
    if tuple(codes.shape) != expected:
        raise JobFailure(f"{where}: codes have shape {tuple(codes.shape)}, expected {expected}")
    if codes.numel() and (codes.min() < 0 or codes.max() >= quantizer.codebook_size):
        raise JobFailure(f"{where}: codes outside [0, {quantizer.codebook_size}): "
                         f"min {int(codes.min())}, max {int(codes.max())}")


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
            out = check_output(quantizer(z), z, quantizer, f"training step {step}")
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
    dim = task.quantizer.dim
    usage = CodeUsage(quantizer.codebook_size, quantizer.depth)
    latent_rank, qerr = LatentRank(dim), QuantizationError(dim)
    for x in setup.eval_batches():
        z = setup.encoder(x)
        out = check_output(quantizer(z), z, quantizer, "evaluation")
        z_hat = decoder_copy.decode(out.codes)
        if z_hat.shape != z.shape:
            raise JobFailure(f"evaluation: decode(codes) has shape {tuple(z_hat.shape)}, expected {tuple(z.shape)}")
        x_hat = setup.decoder(z_hat.to(z.dtype))
        usage.update(out.codes.cpu())
        latent_rank.update(z.float().cpu())
        qerr.update(z.float().cpu(), z_hat.float().cpu())
        for name in task.metrics:  # only what the task asks for: rFID is not free
            setup.fidelity_metrics[name].update(x_hat.float(), x)
    metrics = dict(usage.compute())
    book = quantizer.codebook()
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
