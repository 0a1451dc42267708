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


# Code usage is normalized by the task's K (the rate it grants, log2 K bits per token), not by the
# codes a quantizer chooses to emit: an FSQ that emits 1,000 codes at K = 4,096 uses a quarter of
# the budget, not all of it. `emitted_codes` says how many it can emit.
register_metric("utilization", True, "distinct codes used on the eval set / K (the task's K, the rate it grants, "
                "not the codes the quantizer emits)", ".1%")
register_metric("emitted_codes", True, "codes the quantizer can emit: codebook_size^depth as it declares them "
                "(<= K; below K it leaves rate unused)", ".0f", label="emitted codes")
register_metric("perplexity", True, "exp(entropy) of the eval code histogram", ".1f")
register_metric("perplexity_ratio", True, "perplexity / K (the task's K)", ".1%", label="perplexity/K")
register_metric("dead_codes", False, "of the task's K codes, those never used on the eval set (codes the quantizer "
                "cannot emit count as dead)", ".0f", label="dead codes")
register_metric("codebook_rank", True, "effective rank (Roy & Vetterli) of the code vectors in use, weighted by "
                "usage (decode(codes) over the eval tokens, centred); dead codes do not count", ".2f",
                label="codebook rank")
register_metric("latent_rank", True, "effective rank of the centred encoder latents", ".2f", label="latent rank")
register_metric("quantization_error", False, "share of the latent variance no affine map of decode(codes) recovers "
                "(1 - adjusted R^2): comparable where decode has a space of its own (FSQ, LFQ, Gumbel)",
                ".4f", label="quant. error")
register_metric("bits_per_token", False, "depth x log2(codebook size)", ".2f", label="bits/token")
CODE_METRICS = ("utilization", "emitted_codes", "perplexity", "perplexity_ratio", "dead_codes", "codebook_rank",
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
    """Histogram of emitted codes. Codes of depth > 1 count as one joint symbol per token.

    `codebook_size` and `depth` are what the quantizer declares (its codes lie in
    [0, codebook_size)); `k` is the task's K, which utilization, perplexity/K and dead codes are
    normalized by (default: codebook_size^depth). A quantizer emitting fewer than K codes (an FSQ
    whose levels multiply to less than K) leaves part of the rate unused, and that shows.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, codebook_size: int, depth: int = 1, k: int | None = None):
        super().__init__()
        self.codebook_size, self.depth = codebook_size, depth
        self.num_symbols = codebook_size ** depth
        self.k = self.num_symbols if k is None else k
        if self.num_symbols > self.k:
            raise ValueError(f"{codebook_size}^{depth} codes exceed K = {self.k}: the rate check should have refused it")
        self.add_state("counts", torch.zeros(self.num_symbols, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, codes: Tensor) -> None:
        codes = codes.long()
        if codes.dim() == 3:  # (batch, tokens, depth) -> one joint symbol per token
            codes = code_index(codes, self.codebook_size, codes.shape[-1])
        self.counts += torch.bincount(codes.flatten(), minlength=self.num_symbols)

    def compute(self) -> dict[str, float]:
        return usage_of(self.counts, self.k, self.num_symbols)

    @staticmethod
    def combined(usages: list[CodeUsage]) -> dict[str, float]:
        """The usage of several levels' codebooks as one: their entries side by side (K = the sum of
        the levels' K), every token of every level counted once. One level: its own compute()."""
        if len(usages) == 1:
            return usages[0].compute()
        return usage_of(torch.cat([u.counts for u in usages]), sum(u.k for u in usages),
                      sum(u.num_symbols for u in usages))


def usage_of(counts: Tensor, k: int, emitted: int) -> dict[str, float]:
    """The code-usage metrics of a histogram of codes (also the training loop's usage curve)."""
    p = counts[counts > 0].double() / counts.sum()
    perplexity = float(torch.exp(-(p * p.log()).sum()))
    used = int((counts > 0).sum())
    return {
        "utilization": used / k,
        "emitted_codes": float(emitted),
        "perplexity": perplexity,
        "perplexity_ratio": perplexity / k,
        "dead_codes": float(k - used),
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


class CodebookRank(LatentRank):
    """Effective rank of the code vectors in use, each weighted by how often it is used: the rank of
    decode(codes) over the eval tokens, whose covariance is sum_k p_k (c_k - m)(c_k - m)^T with p_k
    the usage share of code k and m = sum_k p_k c_k. Fed decode(codes) per batch (update(z_hat)).

    The rank of the whole codebook counts dead codes: an untouched random init scores best while
    one code in fifty is used (ema_vq on image lite, issue 9). Weighting by usage measures
    embedding collapse in what the decoder actually receives; a code used once barely counts. It
    needs no codebook(): the harness has decode(codes) of every code used, for every quantizer.
    """


class QuantizationError(Metric):
    """Share of the latent variance lost by quantization, comparable across codebook kinds:
    1 - adjusted R^2 of the least-squares affine regression of z on z_hat = decode(codes),

        min_{A, b} sum |z - A z_hat - b|^2 / (n - r - 1)   over   sum |z - mean z|^2 / (n - 1),

    with r the rank of the centred z_hat (the regressors), streamed as sums in float64.

    Why affine: implicit codebooks (FSQ, LFQ) and Gumbel decode through their own learned
    projection into a space only the decoder reads, so |z - z_hat|^2 compares vectors in two
    spaces. Every decoder's first layer is affine, so an affine map of z_hat costs it nothing: the
    error is invariant to one. For nearest-code VQ whose codes are the means of their latents
    (the k-means optimum, and where EMA/commitment drive them) the fitted map is the identity and
    the error is sum |z - z_hat|^2 / sum |z - mean z|^2, up to the degrees-of-freedom factor. It is
    bounded below by the within-code spread of z (the error of the best decoder of these codes).
    The degrees of freedom (n - r - 1) remove the in-sample fit's bias, which grows with dim / n.
    0 = z is recovered exactly, 1 = no better than the mean.
    """

    higher_is_better = False
    full_state_update = False
    RANK_RTOL = 1e-9  # eigenvalues below this x the largest are float32 rounding of a lower-rank z_hat

    def __init__(self, dim: int):
        super().__init__()
        for name, shape in [("sum_z", (dim,)), ("sum_h", (dim,)), ("sq_z", ()), ("hh", (dim, dim)),
                            ("hz", (dim, dim)), ("n", ())]:
            self.add_state(name, torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, z: Tensor, z_hat: Tensor) -> None:
        z, h = z.detach().double().reshape(-1, z.shape[-1]), z_hat.detach().double().reshape(-1, z.shape[-1])
        self.sum_z += z.sum(0)
        self.sum_h += h.sum(0)
        self.sq_z += (z ** 2).sum()
        self.hh += h.T @ h
        self.hz += h.T @ z
        self.n += z.shape[0]

    def compute(self) -> float:
        n = float(self.n)
        mean_z, mean_h = self.sum_z / n, self.sum_h / n
        total = float(self.sq_z - n * (mean_z ** 2).sum())  # sum |z - mean z|^2
        s_hh = self.hh - n * torch.outer(mean_h, mean_h)  # centred scatter of z_hat
        s_hz = self.hz - n * torch.outer(mean_h, mean_z)
        eig, vec = torch.linalg.eigh((s_hh + s_hh.T) / 2)
        top = float(eig.max())
        keep = eig > self.RANK_RTOL * top if top > 0 else torch.zeros_like(eig, dtype=torch.bool)
        # explained sum of squares of the least-squares fit: tr(S_zh S_hh^+ S_hz), in z_hat's eigenbasis
        proj = vec[:, keep].T @ s_hz
        explained = float(((proj ** 2).sum(1) / eig[keep]).sum())
        rank = int(keep.sum())
        if total <= 0 or n - rank - 1 <= 0:
            return math.inf  # no spread to compare with, or no residual degrees of freedom
        residual = max(total - explained, 0.0)
        return (residual / (n - rank - 1)) / (total / (n - 1))


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
