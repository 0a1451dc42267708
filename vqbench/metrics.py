"""Streaming metrics (torchmetrics style: update/compute, `higher_is_better`), and their registry.

Every result reports the codebook metrics in CODE_METRICS; families add fidelity metrics with
`register_metric`. Evaluation streams over batches, so memory does not grow with the eval set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from vqbench.ops import code_index


class MetricUnavailable(RuntimeError):
    """compute() of a metric that could not be set up (e.g. its weights cannot be downloaded);
    str() is the reason, which the result should record in place of a number."""


class Unavailable:
    """Stands in for a metric that could not be set up: update() does nothing and compute()
    raises MetricUnavailable(reason), so a result says why, never a made-up value."""

    def __init__(self, reason: str):
        self.reason = reason

    def update(self, *args, **kwargs) -> None:
        pass

    def reset(self) -> None:
        pass

    def compute(self):
        raise MetricUnavailable(self.reason)

    def to(self, *args, **kwargs):
        return self


@dataclass(frozen=True)
class MetricSpec:
    """Everything known about a metric, registered once by its owner (a family, or the core for
    code usage): the leaderboard, `vqbench metrics`, the docs and result checks all read this."""
    name: str
    higher_is_better: bool
    doc: str  # one line: the definition
    fmt: str = ".4g"  # how the leaderboard prints it
    label: str = ""  # column header; default: the name
    unit: str = ""  # e.g. "dB"; empty for ratios and counts
    factory: Callable[[MetricContext], object] | None = None  # builds the streaming metric; None: the core computes it
    inputs: Literal["reconstruction", "eval"] = "reconstruction"  # update(x_hat, x), or update(EvalBatch)

    @property
    def description(self) -> str:
        return self.doc


@dataclass
class MetricContext:
    """What a metric factory may read: the task, the device, the family's Setup.metric_context,
    and `shared`, one dict per evaluation for metrics that share work (rFID and KID share features)."""
    task: Any
    device: torch.device
    context: dict[str, Any]
    shared: dict[str, Any] = field(default_factory=dict)


METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, higher_is_better: bool, doc: str, fmt: str = ".4g", *, label: str = "",
                    unit: str = "", factory: Callable[[MetricContext], object] | None = None,
                    inputs: Literal["reconstruction", "eval"] = "reconstruction") -> MetricSpec:
    spec = MetricSpec(name, higher_is_better, doc, fmt, label or name, unit, factory, inputs)
    if name in METRICS and replace(METRICS[name], factory=None) != replace(spec, factory=None):
        raise ValueError(f"metric {name!r} is already registered with another spec; a metric has one owner")
    METRICS[name] = spec
    return spec


def build_metrics(names: Sequence[str], ctx: MetricContext) -> dict[str, object]:
    """The streaming metrics a task asks for, in its order (construction order is part of the
    seeded run: some weights are initialised before they are loaded)."""
    missing = [n for n in names if METRICS[n].factory is None]
    if missing:
        raise ValueError(f"metric(s) {', '.join(missing)} have no factory: they are computed by the core")
    return {name: METRICS[name].factory(ctx) for name in names}


register_metric("utilization", True, "distinct codes used on the eval set / K", ".1%")
register_metric("perplexity", True, "exp(entropy) of the eval code histogram", ".1f")
register_metric("perplexity_ratio", True, "perplexity / K", ".1%", label="perplexity/K")
register_metric("dead_codes", False, "codes never used on the eval set", ".0f", label="dead codes")
register_metric("codebook_rank", True, "effective rank (Roy & Vetterli) of the centred codebook", ".2f",
                label="codebook rank")
register_metric("latent_rank", True, "effective rank of the centred encoder latents", ".2f", label="latent rank")
register_metric("quantization_error", False, "sum |z - decode(codes)|^2 / sum |z - mean z|^2", ".4f",
                label="quant. error")
register_metric("bits_per_token", False, "depth x log2(codebook size)", ".2f", label="bits/token")
CODE_METRICS = ("utilization", "perplexity", "perplexity_ratio", "dead_codes", "codebook_rank",
                "latent_rank", "quantization_error")


def effective_rank_from_singular_values(s: Tensor) -> float:
    """exp(entropy of s / sum s) (Roy & Vetterli 2007): 1 for rank one, n for n equal values."""
    s = s.double().clamp_min(0)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def effective_rank(matrix: Tensor) -> float:
    """Effective rank of the rows of `matrix` (n, d) after centring."""
    m = matrix.detach().double()
    return effective_rank_from_singular_values(torch.linalg.svdvals(m - m.mean(0)))


class CodeUsage(Metric):
    """Histogram of emitted codes. Codes of depth > 1 count as one joint symbol per token."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, codebook_size: int, depth: int = 1):
        super().__init__()
        self.codebook_size, self.depth = codebook_size, depth
        self.num_symbols = codebook_size ** depth
        self.add_state("counts", torch.zeros(self.num_symbols, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, codes: Tensor) -> None:
        codes = codes.long()
        if codes.dim() == 3:  # (batch, tokens, depth) -> one joint symbol per token
            codes = code_index(codes, self.codebook_size, codes.shape[-1])
        self.counts += torch.bincount(codes.flatten(), minlength=self.num_symbols)

    def compute(self) -> dict[str, float]:
        counts = self.counts.double()
        p = counts[counts > 0] / counts.sum()
        perplexity = float(torch.exp(-(p * p.log()).sum()))
        used = int((self.counts > 0).sum())
        return {
            "utilization": used / self.num_symbols,
            "perplexity": perplexity,
            "perplexity_ratio": perplexity / self.num_symbols,
            "dead_codes": float(self.num_symbols - used),
        }


class LatentRank(Metric):
    """Effective rank of latents, from a streamed covariance (sum x, sum x x^T) in float64."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, dim: int):
        super().__init__()
        self.add_state("total", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("outer", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, z: Tensor) -> None:
        z = z.detach().reshape(-1, z.shape[-1]).double()
        self.total += z.sum(0)
        self.outer += z.T @ z
        self.n += z.shape[0]

    def compute(self) -> float:
        mean = self.total / self.n
        cov = self.outer / self.n - torch.outer(mean, mean)
        eig = torch.linalg.eigvalsh((cov + cov.T) / 2).clamp_min(0)
        return effective_rank_from_singular_values(eig.sqrt())  # singular values of centred data


class QuantizationError(Metric):
    """sum |z - z_hat|^2 / sum |z - mean(z)|^2: shift-invariant, 0 = exact, 1 = as bad as the mean."""

    higher_is_better = False
    full_state_update = False

    def __init__(self, dim: int):
        super().__init__()
        self.add_state("err", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sq", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, z: Tensor, z_hat: Tensor) -> None:
        z, z_hat = z.detach().double().reshape(-1, z.shape[-1]), z_hat.detach().double().reshape(-1, z.shape[-1])
        self.err += ((z - z_hat) ** 2).sum()
        self.sq += (z ** 2).sum()
        self.total += z.sum(0)
        self.n += z.shape[0]

    def compute(self) -> float:
        spread = self.sq - (self.total ** 2).sum() / self.n
        return float(self.err / spread) if spread > 0 else math.inf


class MeanSquaredError(Metric):
    """Mean over elements of (x_hat - x)^2."""

    higher_is_better = False
    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("sse", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, x_hat: Tensor, x: Tensor) -> None:
        self.sse += ((x_hat.detach().double() - x.double()) ** 2).sum()
        self.n += x.numel()

    def compute(self) -> float:
        return float(self.sse / self.n)


register_metric("mse", False, "mean squared reconstruction error from decode(codes)", ".4g",
                factory=lambda ctx: MeanSquaredError().to(ctx.device))
