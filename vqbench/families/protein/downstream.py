"""StructTokenBench's sensitivity and effectiveness axes (arXiv 2503.00089), on the eval chains alone.

- Sensitivity: do similar token sequences mean similar structures? For every pair of eval chains,
  the global alignment score of their token sequences (Bio.Align.PairwiseAligner; substitution
  score = cosine similarity of the two codes' decoded vectors; gap open -1, extend -0.1; end gaps
  free, so a length difference alone costs nothing; divided by the shorter length) against the TM-score of their true structures (TM-align, normalized by the
  shorter chain); reported as the Spearman correlation over pairs. With charged end gaps, one code
  on every residue scored -0.34 on the lite eval pairs: lengths alone, not tokens. Now it scores a
  constant (unavailable: one code carries no structure).
- Effectiveness: what do the frozen code vectors know? Linear probes from each residue's decoded
  code vector to labels no download is needed for: 3-state secondary structure (DSSP by pydssp on
  the true backbone with O) and the CA B-factor read from the file (z-scored per chain; chains with
  constant B-factors, e.g. NMR models, are left out). Two-fold cross-fitting over eval chains (folds
  by a hash of the chain id): a probe fit on one fold is scored on the other, both ways, pooled.
  The probes see the eval chains only: training chains' codes never leave the confined stage.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from vqbench.cache import read_verified, write_verified
from vqbench.metrics import MetricUnavailable
from vqbench.paths import cache_home

GAP_OPEN, GAP_EXTEND = -1.0, -0.1  # in units of cosine similarity
MAX_SYMBOLS = 4096  # used codes beyond this make the substitution matrix too large (unavailable)
MAX_PAIRS = 2000  # eval pairs scored for sensitivity (all 1,081 of lite; a hashed subset of a large full-tier set)
PAIR_TM_VERSION = 1  # bump when the pair TM-score definition changes: names the cache
SS3 = "HEC"  # helix, strand, coil (pydssp's 3-state output, '-' read as coil)


def pair_tm_scores(chains, write: bool) -> dict[str, float]:
    """TM-score of every pair of chains' true CA traces, normalized by the shorter chain, keyed
    'id_a|id_b' (ids sorted); cached by the chains' content. Written only when `write` (harness code)."""
    digest = hashlib.sha256(json.dumps([PAIR_TM_VERSION, MAX_PAIRS, sorted((c.id, c.sequence) for c in chains)]).encode())
    path = cache_home() / "protein" / "pair_tm" / f"{digest.hexdigest()[:32]}.json"
    if (data := read_verified(path)) is not None:
        return json.loads(data)
    from tmtools import tm_align
    ordered = sorted(chains, key=lambda c: c.id)
    pairs = [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1:]]
    if len(pairs) > MAX_PAIRS:  # a fixed subset, by a hash of the ids: TM-align is ~10 ms a pair
        pairs = sorted(pairs, key=lambda p: hashlib.sha256(f"{p[0].id}|{p[1].id}".encode()).digest())[:MAX_PAIRS]
    out = {}
    for a, b in pairs:
        short, long_ = (a, b) if len(a) <= len(b) else (b, a)
        res = tm_align(np.ascontiguousarray(long_.coords[:, 1], np.float64),
                       np.ascontiguousarray(short.coords[:, 1], np.float64), long_.sequence, short.sequence)
        out[f"{a.id}|{b.id}"] = float(res.tm_norm_chain2)
    if write:
        write_verified(path, json.dumps(out).encode())
    return out


def ss3_labels(coords: np.ndarray) -> np.ndarray | None:
    """(L,) 3-state labels (indices into SS3) from an (L, 4, 3) N, CA, C, O backbone; None if an O is missing."""
    if np.isnan(coords).any():
        return None
    import pydssp
    states = pydssp.assign(coords.astype(np.float64), out_type="c3")
    return np.array([SS3.index(s) if s in SS3 else 2 for s in states], dtype=np.int64)


class _PerResidue:
    """Collects, per eval item, its token symbols and decoded code vectors."""

    def __init__(self):
        self.items: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, batch) -> None:
        codes = batch.codes.long().cpu()
        if codes.dim() == 2:
            codes = codes.unsqueeze(-1)
        for i, item_id in enumerate(batch.batch.ids):
            self.items[item_id] = (codes[i], batch.z_hat[i].double().cpu())

    def cross_fit(self, targets: dict[str, torch.Tensor], none_reason: str):
        """(x_train, y_train, x_test, y_test) of both folds, standardized by the training fold: the
        items with a target, split in two by a hash of their id (`none_reason` if a fold is empty)."""
        folds = [([], []), ([], [])]
        for item_id, (_, vecs) in self.items.items():
            if item_id in targets:
                folds[_fold(item_id)][0].append(vecs)
                folds[_fold(item_id)][1].append(targets[item_id])
        if not all(f[0] for f in folds):
            raise MetricUnavailable(none_reason)
        for k in (0, 1):
            xtr, xte = _standardize(torch.cat(folds[k][0]), torch.cat(folds[1 - k][0]))
            yield xtr, torch.cat(folds[k][1]), xte, torch.cat(folds[1 - k][1])


def _fold(item_id: str) -> int:
    return hashlib.sha256(item_id.encode()).digest()[0] % 2


class TokenSensitivity(_PerResidue):
    def __init__(self, pair_tm: dict[str, float]):
        super().__init__()
        self.pair_tm = pair_tm

    def compute(self) -> float:
        from Bio.Align import PairwiseAligner, substitution_matrices
        from scipy.stats import spearmanr
        keys, vectors, tokens = {}, [], {}
        for item_id, (codes, vecs) in self.items.items():
            seq = []
            for t, v in zip(map(tuple, codes.tolist()), vecs):
                if t not in keys:
                    keys[t] = f"c{len(keys)}"
                    vectors.append(v)
                seq.append(keys[t])
            tokens[item_id] = seq
        if len(keys) < 2:
            raise MetricUnavailable("one code used on the eval set: token sequences carry no structure")
        if len(keys) > MAX_SYMBOLS:
            raise MetricUnavailable(f"{len(keys)} distinct codes used; the substitution matrix is limited to "
                                    f"{MAX_SYMBOLS} codes")
        u = torch.stack(vectors)
        u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
        matrix = substitution_matrices.Array(alphabet=tuple(keys.values()), dims=2, data=(u @ u.T).numpy())
        aligner = PairwiseAligner(mode="global", substitution_matrix=matrix, open_gap_score=GAP_OPEN,
                                  extend_gap_score=GAP_EXTEND, end_gap_score=0.0)
        align, tm = [], []
        for pair, score in sorted(self.pair_tm.items()):
            a, b = pair.split("|")
            if a in tokens and b in tokens:
                align.append(aligner.score(tokens[a], tokens[b]) / min(len(tokens[a]), len(tokens[b])))
                tm.append(score)
        if len(tm) < 3:
            raise MetricUnavailable(f"{len(tm)} eval pairs with a TM-score; need at least 3")
        if np.ptp(align) == 0:
            raise MetricUnavailable("every pair's token sequences align equally well: the tokens rank no pair")
        return float(spearmanr(align, tm).statistic)


def _standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-8)
    return (train - mean) / std, (test - mean) / std


def _with_bias(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float = 1e-3) -> torch.Tensor:
    """Multinomial logistic regression (weights with a bias row), L-BFGS to convergence."""
    x1 = _with_bias(x)
    w = torch.zeros(x1.shape[1], classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x1 @ w, y) + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return w.detach()


class SecondaryStructureProbe(_PerResidue):
    """Accuracy of a linear probe from code vectors to 3-state DSSP labels (cross-fitted)."""

    def __init__(self, labels: dict[str, np.ndarray | None]):
        super().__init__()
        self.labels = labels

    def compute(self) -> float:
        labelled = {i: torch.from_numpy(y) for i, y in self.labels.items() if y is not None}
        correct, total = 0, 0
        for xtr, ytr, xte, yte in self.cross_fit(labelled, "fewer than two eval chains with every O atom (DSSP "
                                                 "needs N, CA, C, O)"):
            w = _fit_logistic(xtr, ytr, len(SS3))
            pred = (_with_bias(xte) @ w).argmax(1)
            correct, total = correct + int((pred == yte).sum()), total + len(yte)
        return correct / total


class BFactorProbe(_PerResidue):
    """Spearman correlation of a ridge probe's predictions with per-chain z-scored B-factors (cross-fitted)."""

    def __init__(self, bfactors: dict[str, np.ndarray], l2: float = 1e-2):
        super().__init__()
        self.targets = {i: (b - b.mean()) / b.std() for i, b in bfactors.items() if np.ptp(b) > 0}
        self.l2 = l2

    def compute(self) -> float:
        from scipy.stats import spearmanr
        targets = {i: torch.from_numpy(t).double() for i, t in self.targets.items()}
        folds = list(self.cross_fit(targets, "fewer than two eval chains with varying B-factors"))
        if len(torch.unique(torch.cat([v for i, (_, v) in self.items.items() if i in targets]), dim=0)) < 2:
            raise MetricUnavailable("one code vector on every residue: a probe's predictions carry no ranking")
        pred_all, true_all = [], []
        for xtr, ytr, xte, yte in folds:
            x1 = _with_bias(xtr)
            reg = self.l2 * len(xtr) * torch.eye(x1.shape[1], dtype=x1.dtype)
            reg[-1, -1] = 0
            w = torch.linalg.solve(x1.T @ x1 + reg, x1.T @ ytr)
            pred_all.append(_with_bias(xte) @ w)
            true_all.append(yte)
        pred, true = torch.cat(pred_all).numpy(), torch.cat(true_all).numpy()
        return float(spearmanr(pred, true).statistic)
