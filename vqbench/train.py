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
import re
from typing import Callable

import numpy as np
import torch

from vqbench.contract import Quantizer
from vqbench.enforce import JobFailure, check_output, check_rate, decode_table, max_difference
from vqbench.families import Batch, EvalBatch, Setup
from vqbench.metrics import METRICS, CodeUsage, LatentRank, MetricUnavailable, QuantizationError, effective_rank
from vqbench.ops import code_index

CURVE_POINTS = 20  # loss-curve (and quantizer-log) points kept per job
LOG_KEYS = 16  # at most this many QuantizerOutput.metrics keys are logged, with plain names
_LOG_NAME = re.compile(r"[A-Za-z0-9_.\-/]{1,48}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loggable(metrics: object) -> dict[str, float]:
    """A quantizer's own training metrics as plain finite floats under plain names (it is untrusted
    data headed for a result file); anything else is dropped."""
    out: dict[str, float] = {}
    for key, value in (metrics.items() if isinstance(metrics, dict) else ()):
        if len(out) == LOG_KEYS:
            break
        try:
            value = float(value.detach()) if isinstance(value, torch.Tensor) and value.numel() == 1 else float(value)
        except (TypeError, ValueError, RuntimeError):
            continue
        if isinstance(key, str) and _LOG_NAME.fullmatch(key) and math.isfinite(value):
            out[key] = value
    return out


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
    curve, quantizer_log = [], []
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
        if step % max(1, spec.steps // CURVE_POINTS) == 0 or step == spec.steps - 1:
            curve.append([step, float(recon.detach())])
            if logged := loggable(out.metrics):
                quantizer_log.append([step, logged])
        if on_step:
            on_step(step)
    return {"loss_curve": curve, "final_reconstruction_loss": curve[-1][1] if curve else None,
            "quantizer_log": quantizer_log}


def check_against_table(decoder_copy: Quantizer, out, z_hat) -> None:
    """An eval batch's decode(codes) and z_q must both be the table's vectors for its codes."""
    if (diff := max_difference(decoder_copy.decode(out.codes.clone()), z_hat)) is not None:
        raise JobFailure(f"evaluation: decode(codes) changed after the eval pass began (max difference "
                         f"{diff:.3g} from the same codes decoded before it): decode must depend on "
                         "codes and trained weights only, not on what forward() saw")
    if (diff := max_difference(out.z_q, z_hat)) is not None:
        raise JobFailure(f"evaluation: z_q differs from decode(codes) in eval mode (max difference "
                         f"{diff:.3g}): z_q must be the decoded code vectors, not a pass-through of z")


@torch.no_grad()
def evaluate(setup: Setup, quantizer: Quantizer, task, fidelity: dict[str, object]
             ) -> tuple[dict[str, float | None], dict[str, str]]:
    """Metrics, and {metric: reason} for those that could not be computed. `fidelity` holds the
    task's metrics (vqbench.metrics.build_metrics); each eval batch holds items of one length."""
    for m in (setup.encoder, setup.decoder, quantizer):
        m.eval()
    decoder_copy = copy.deepcopy(quantizer)  # decode() sees trained weights, not forward()'s state
    size, depth = check_rate(decoder_copy, task.quantizer.codebook_size, "evaluation: ")  # frozen here
    dim = task.quantizer.dim
    device = next((t.device for t in (*decoder_copy.parameters(), *decoder_copy.buffers())), torch.device("cpu"))
    table = decode_table(decoder_copy, size, depth, dim, device)  # before any eval input exists
    usage = CodeUsage(size, depth)
    latent_rank, qerr = LatentRank(dim), QuantizationError(dim)
    for item in setup.eval_batches():
        batch = item if isinstance(item, Batch) else Batch(item)
        x = batch.x
        z = setup.encoder(x)
        out = check_output(quantizer(z), z, "evaluation", size, depth)
        z_hat = table[code_index(out.codes, size, depth)].to(z.device)
        check_against_table(decoder_copy, out, z_hat)
        x_hat = setup.decoder(z_hat.to(z.dtype))
        usage.update(out.codes.cpu())
        latent_rank.update(z.float().cpu())
        qerr.update(z.float().cpu(), z_hat.float().cpu())
        for name in task.metrics:  # only what the task asks for: rFID is not free
            if METRICS[name].inputs == "eval":
                fidelity[name].update(EvalBatch(batch, x_hat.float(), z, z_hat, out.codes, table))
            else:
                fidelity[name].update(x_hat.float(), x)
    metrics = dict(usage.compute())
    book = decoder_copy.codebook()
    metrics["codebook_rank"] = effective_rank(book) if book is not None else None
    metrics["latent_rank"] = latent_rank.compute()
    metrics["quantization_error"] = qerr.compute()
    unavailable = {}
    for name in task.metrics:
        try:
            value = fidelity[name].compute()
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
