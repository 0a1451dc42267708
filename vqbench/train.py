"""The training loop every task shares: the task owns the optimizer, steps and budget, not the
submission. It runs in the job's first stage (vqbench.stages); evaluation happens in the others.
"""
from __future__ import annotations

import math
import random
import re
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from vqbench.contract import Quantizer
from vqbench.enforce import JobFailure, check_output, codes_outside
from vqbench.families import Setup
from vqbench.metrics import usage_of
from vqbench.ops import code_index

CURVE_POINTS = 20  # loss-curve (and quantizer-log, usage-curve) points kept per job
USAGE_MAX_CODES = 1 << 24  # the usage curve counts every code of the space; a larger space is not counted
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


def window_usage(counts: torch.Tensor) -> list[float]:
    """[utilization, perplexity / K] of the codes counted in `counts` (one window of training steps)."""
    usage = usage_of(counts, len(counts), len(counts))
    return [round(usage["utilization"], 6), round(usage["perplexity_ratio"], 6)]


class StepChecks:
    """The training step's checks (codes in [0, K) at every level, a finite loss) without a host read
    per step.

    Reading a CUDA tensor on the host (bool(), float(), int()) waits for every queued kernel, so
    per-step checks left the GPU idle while the host prepared the next step. On CUDA each step's
    evidence stays on the device and `flush()` reads it all at once at the loop's curve points
    (1/20 of training): a failure reports its first bad step, a few steps late at most. On CPU
    nothing waits, so flush() runs every step and a failure stops training before its backward pass.
    """

    def __init__(self, device: torch.device, codebook_sizes: list[int]):
        self.every_step = device.type != "cuda"
        self.codebook_sizes = codebook_sizes  # per level
        self.pending: list[tuple[int, Tensor]] = []

    def add(self, step: int, codes: list[Tensor], recon: Tensor, quantizer_loss, loss: Tensor) -> None:
        floats = [recon.detach(), torch.as_tensor(quantizer_loss, device=loss.device).detach(), loss.detach()]
        ranged = [bound for c in codes for bound in
                  ([c.min(), c.max()] if c.numel() else [torch.zeros((), device=loss.device)] * 2)]
        self.pending.append((step, torch.stack([v.double().reshape(()) for v in ranged + floats])))
        if self.every_step:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        rows = torch.stack([evidence for _, evidence in self.pending]).cpu().tolist()  # the one host read
        steps, self.pending = [step for step, _ in self.pending], []
        for step, row in zip(steps, rows):
            for level, size in enumerate(self.codebook_sizes):
                low, high = row[2 * level], row[2 * level + 1]
                if low < 0 or high >= size:
                    raise codes_outside(f"training step {step}{level_name(level, len(self.codebook_sizes))}",
                                        size, int(low), int(high))
            recon, quantizer_loss, loss = row[-3:]
            if not math.isfinite(loss):
                raise JobFailure(f"non-finite loss at training step {step}: reconstruction {recon:.4g}, "
                                 f"quantizer loss {quantizer_loss:.4g}")


def level_name(level: int, levels: int) -> str:
    """", level 1" in a message about a hierarchical model; nothing when there is one level."""
    return f", level {level}" if levels > 1 else ""


def code_spaces(quantizers: list[Quantizer]) -> list[int]:
    """The joint code space of each level: codebook_size^depth symbols."""
    return [q.codebook_size ** q.depth for q in quantizers]


def train(setup: Setup, quantizers: list[Quantizer], task, on_step: Callable[[int], None] | None = None) -> dict:
    """Returns the loss curve and, at the same steps, the quantizer's own log (keys `level<l>/...` when
    there are several levels) and
    the harness's usage curve: [step, utilization, perplexity / K] of the codes emitted since the
    previous point, over the codebook entries of every level together (when a method collapses, and
    whether seeds differ, is visible there; the eval metrics see only the end)."""
    spec = task.train
    modules = [setup.encoder, setup.decoder, *quantizers]
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if spec.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=spec.lr, weight_decay=spec.weight_decay) if params else None
    for m in modules:
        m.train()
    device = next((p.device for p in params), torch.device("cpu"))
    use_amp = spec.amp and device.type == "cuda"
    curve, quantizer_log, usage_curve = [], [], []
    spaces = code_spaces(quantizers)
    offsets = [sum(spaces[:level]) for level in range(len(spaces))]  # the levels' codes side by side
    counted = sum(spaces) <= USAGE_MAX_CODES
    counts = None  # codes emitted since the last curve point, on the codes' device (no sync per step)
    checks = StepChecks(device, [q.codebook_size for q in quantizers])
    for step in range(spec.steps):
        for q in quantizers:
            q.schedule(step, spec.steps)
        x = next(setup.train_batches)
        outs = []

        def quantize(level: int, z: Tensor) -> Tensor:
            nonlocal counts
            q = quantizers[level]
            out = check_output(q(z), z, f"training step {step}{level_name(level, len(quantizers))}", q.codebook_size,
                               q.depth, check_range=False)  # StepChecks reads the range
            if counted:  # integer work: autocast leaves it alone
                # clamped: on CUDA the range is read later, and an index past the end is a device-side assert
                codes = out.codes.detach().clamp(0, q.codebook_size - 1)
                index = code_index(codes, q.codebook_size, q.depth).flatten() + offsets[level]
                counts = torch.zeros(sum(spaces), dtype=torch.long, device=index.device) if counts is None else counts
                counts.index_add_(0, index, torch.ones_like(index))  # no K-long temporary per step (K up to 2^24)
            outs.append(out)
            return out.z_q

        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            _, quantized = setup.encode(x, quantize)
            x_hat = setup.decode(quantized)
            recon = setup.reconstruction_loss(x_hat.float(), x)
            quantizer_loss = sum(out.loss for out in outs)
            loss = recon + quantizer_loss
        checks.add(step, [out.codes for out in outs], recon, quantizer_loss, loss)
        if optimizer is not None and loss.requires_grad:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if spec.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
            optimizer.step()
        if step % max(1, spec.steps // CURVE_POINTS) == 0 or step == spec.steps - 1:
            checks.flush()
            curve.append([step, float(recon.detach())])
            own = outs[0].metrics if len(outs) == 1 else \
                {f"level{level}/{k}": v for level, out in enumerate(outs) if isinstance(out.metrics, dict)
                 for k, v in out.metrics.items() if isinstance(k, str)}
            if logged := loggable(own):
                quantizer_log.append([step, logged])
            if counts is not None:
                usage_curve.append([step, *window_usage(counts)])
                counts.zero_()
        if on_step:
            on_step(step)
    return {"loss_curve": curve, "final_reconstruction_loss": curve[-1][1] if curve else None,
            "quantizer_log": quantizer_log, "usage_curve": usage_curve}
