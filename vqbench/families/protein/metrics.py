"""Protein-structure metrics, StructTokenBench's axes (arXiv 2503.00089): reconstruction per
protein (RMSD after Kabsch, TM-score, lDDT-Ca, GDT-TS), code usage per protein (their UR and
perplexity are computed one protein at a time and averaged, so they are bounded by length / K),
and distinctiveness of the code vectors. Every value is the mean over eval proteins; the
eval-set-wide usage is the core's `utilization` and `perplexity_ratio`.
"""
from __future__ import annotations

import numpy as np
import torch

from vqbench.families.protein.downstream import BFactorProbe, SecondaryStructureProbe, TokenSensitivity
from vqbench.families.protein.geometry import gdt_ts, kabsch_rmsd, lddt, tm_score
from vqbench.metrics import MetricUnavailable, register_metric


class PerProtein:
    """Mean over eval proteins of score(pred (L, 3, 3), true (L, 3, 3), sequence)."""

    def __init__(self, score):
        self.score, self.values = score, []

    def update(self, batch) -> None:
        x, x_hat = batch.batch.x.double().cpu().numpy(), batch.x_hat.double().cpu().numpy()
        for i, seq in enumerate(batch.batch.side["sequence"]):
            self.values.append(self.score(x_hat[i], x[i], seq))

    def compute(self) -> float:
        return float(np.mean(self.values))


def symbols(codes: torch.Tensor) -> torch.Tensor:
    """(batch, L) or (batch, L, depth) codes -> (batch, L) symbols, one per distinct code tuple (a
    residual quantizer's tuple is one token: the joint code), without needing the codebook size."""
    codes = codes.long().cpu()
    if codes.dim() == 2:
        return codes
    _, inverse = torch.unique(codes.reshape(-1, codes.shape[-1]), dim=0, return_inverse=True)
    return inverse.reshape(codes.shape[:2])


class ProteinUsage:
    """UR (distinct codes / K) or perplexity / K of each protein's tokens, averaged over proteins."""

    def __init__(self, k: int, kind: str):
        self.k, self.kind, self.values = k, kind, []

    def update(self, batch) -> None:
        for row in symbols(batch.codes):
            counts = torch.bincount(row).double()
            if self.kind == "ur":
                self.values.append(int((counts > 0).sum()) / self.k)
            else:
                p = counts[counts > 0] / counts.sum()
                self.values.append(float(torch.exp(-(p * p.log()).sum())) / self.k)

    def compute(self) -> float:
        return float(np.mean(self.values))


class CodeCosine:
    """Mean cosine similarity between distinct code vectors (decode(code)); lower = more distinct.
    raw: every pair of the K vectors of the decode table, as StructTokenBench does for a codebook.
    weighted: pairs of codes used on the eval set, weighted by p_i p_j (usage shares)."""

    def __init__(self, weighted: bool):
        self.weighted = weighted
        self.table, self.vectors, self.counts = None, {}, {}

    def update(self, batch) -> None:
        if not self.weighted:
            self.table = batch.code_vectors
            return
        codes = batch.codes.long().cpu()
        tuples = codes.reshape(-1, codes.shape[-1] if codes.dim() == 3 else 1)
        vecs = batch.z_hat.reshape(-1, batch.z_hat.shape[-1]).double().cpu()
        found, inverse, counts = torch.unique(tuples, dim=0, return_inverse=True, return_counts=True)
        for u, (key, n) in enumerate(zip(map(tuple, found.tolist()), counts.tolist())):
            self.counts[key] = self.counts.get(key, 0) + n
            self.vectors.setdefault(key, vecs[int((inverse == u).nonzero()[0])])

    def compute(self) -> float:
        if not self.weighted:
            if self.table is None:
                raise MetricUnavailable("the decode table holds only the codes used (the joint code space is too "
                                        "large to decode every code), so the raw codebook cannot be summarized")
            return _mean_cosine(self.table.double().cpu(), None)
        keys = sorted(self.vectors)
        if len(keys) < 2:
            raise MetricUnavailable("fewer than two distinct codes were used on the eval set")
        w = torch.tensor([self.counts[k] for k in keys], dtype=torch.float64)
        return _mean_cosine(torch.stack([self.vectors[k] for k in keys]), w / w.sum())


def _mean_cosine(v: torch.Tensor, p: torch.Tensor | None) -> float:
    """sum_{i != j} w_ij cos(v_i, v_j) / sum_{i != j} w_ij, w = p p^T (uniform when p is None)."""
    u = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sim = u @ u.T
    w = torch.ones_like(sim) if p is None else torch.outer(p, p)
    w.fill_diagonal_(0)
    return float((sim * w).sum() / w.sum())


def _backbone_rmsd(pred, true, seq):
    return kabsch_rmsd(pred.reshape(-1, 3), true.reshape(-1, 3))


_STRUCT = dict(inputs="eval", fmt=".3f")
register_metric("backbone_rmsd", False, "RMSD of N, CA, C after Kabsch superposition (A), mean over eval proteins",
                label="bb RMSD", unit="A", factory=lambda ctx: PerProtein(_backbone_rmsd), **_STRUCT)
register_metric("ca_rmsd", False, "RMSD of CA after Kabsch superposition (A), mean over eval proteins",
                label="CA RMSD", unit="A", factory=lambda ctx: PerProtein(lambda p, t, s: kabsch_rmsd(p[:, 1], t[:, 1])),
                **_STRUCT)
register_metric("tm_score", True, "TM-score of the CA trace (TM-align via tmtools, normalized by the true chain), "
                "mean over eval proteins", label="TM-score", factory=lambda ctx: PerProtein(
                    lambda p, t, s: tm_score(p[:, 1], t[:, 1], s)), **_STRUCT)
register_metric("lddt_ca", True, "lDDT of CA (15 A radius, 0.5/1/2/4 A), mean over eval proteins", label="lDDT-CA",
                factory=lambda ctx: PerProtein(lambda p, t, s: lddt(p[:, 1], t[:, 1])), **_STRUCT)
register_metric("gdt_ts", True, "GDT-TS of CA (1/2/4/8 A, iterated superpositions), mean over eval proteins",
                label="GDT-TS", factory=lambda ctx: PerProtein(lambda p, t, s: gdt_ts(p[:, 1], t[:, 1])), **_STRUCT)
register_metric("protein_utilization", True, "distinct codes in each protein / K, mean over eval proteins "
                "(StructTokenBench's UR; at most length / K)", ".2%", label="UR/protein", inputs="eval",
                factory=lambda ctx: ProteinUsage(ctx.task.quantizer.codebook_size, "ur"))
register_metric("protein_perplexity_ratio", True, "exp(entropy) of each protein's codes / K, mean over eval proteins "
                "(StructTokenBench's perplexity)", ".2%", label="ppl/K per protein", inputs="eval",
                factory=lambda ctx: ProteinUsage(ctx.task.quantizer.codebook_size, "ppl"))
register_metric("code_cosine", False, "mean cosine similarity between all pairs of the K decoded code vectors "
                "(distinctiveness; lower = more distinct)", ".3f", label="code cos", inputs="eval",
                factory=lambda ctx: CodeCosine(False))
register_metric("code_cosine_weighted", False, "mean cosine similarity between pairs of codes used on the eval set, "
                "weighted by their usage shares (lower = more distinct)", ".3f", label="code cos (used)",
                inputs="eval", factory=lambda ctx: CodeCosine(True))
register_metric("token_sensitivity", True, "Spearman correlation over eval pairs between the token sequences' "
                "alignment score (code-vector cosine substitution) and the true structures' TM-score",
                ".3f", label="sensitivity", inputs="eval",
                factory=lambda ctx: TokenSensitivity(ctx.context["pair_tm"]))
register_metric("ss3_probe_accuracy", True, "accuracy of a linear probe from code vectors to 3-state DSSP secondary "
                "structure (2-fold cross-fitting over eval chains)", ".3f", label="SS3 probe", inputs="eval",
                factory=lambda ctx: SecondaryStructureProbe(ctx.context["ss3"]))
register_metric("bfactor_probe_spearman", True, "Spearman correlation of a ridge probe from code vectors with per-chain "
                "z-scored B-factors (2-fold cross-fitting over eval chains)", ".3f", label="B-factor probe",
                inputs="eval", factory=lambda ctx: BFactorProbe(ctx.context["bfactors"]))
