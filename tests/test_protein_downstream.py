"""The protein family's sensitivity and probe metrics on inputs with known answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vqbench.families import Batch, EvalBatch
from vqbench.families.protein.downstream import BFactorProbe, SecondaryStructureProbe, TokenSensitivity
from vqbench.metrics import MetricUnavailable


def feed(metric, items: dict[str, tuple[torch.Tensor, torch.Tensor]]):
    for item_id, (codes, vectors) in items.items():
        x = torch.zeros(1, len(codes), 3, 3)
        metric.update(EvalBatch(Batch(x, [item_id]), x, vectors[None], vectors[None], codes[None], torch.zeros(1)))
    return metric.compute()


def coded(labels: np.ndarray, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    codes = torch.from_numpy(labels)
    return codes, table[codes].double()


def test_probes_read_labels_that_the_codes_carry_and_not_those_they_do_not():
    rng = np.random.default_rng(0)
    table = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    labels = {f"chain{i}": rng.integers(0, 3, 60) for i in range(12)}
    items = {i: coded(y, table) for i, y in labels.items()}
    assert feed(SecondaryStructureProbe(labels), items) == 1.0  # one code per state: linearly separable
    shuffled = {i: rng.permutation(y) for i, y in labels.items()}
    assert feed(SecondaryStructureProbe(shuffled), items) < 0.5  # labels independent of codes: near chance
    bfactors = {i: y.astype(np.float64) * 10 + rng.normal(0, 1, len(y)) for i, y in labels.items()}
    assert feed(BFactorProbe(bfactors), items) > 0.8
    flat = {i: np.full(len(y), 20.0) for i, y in labels.items()}
    with pytest.raises(MetricUnavailable):  # NMR-like constant B-factors: no target, not a default score
        feed(BFactorProbe(flat), items)


def test_sensitivity_follows_structural_similarity_that_tokens_reflect():
    rng = np.random.default_rng(1)
    table = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    base = rng.integers(0, 6, 50)
    items, mutated = {}, {}
    for i in range(10):  # chain i: the base token sequence with i*5 positions changed
        seq = base.copy()
        seq[:i * 5] = rng.integers(0, 6, i * 5)
        mutated[f"c{i}"] = i
        items[f"c{i}"] = coded(seq, table)
    ids = sorted(items)
    pair_tm = {f"{a}|{b}": 1 - 0.05 * (mutated[a] + mutated[b]) for k, a in enumerate(ids) for b in ids[k + 1:]}
    assert feed(TokenSensitivity(pair_tm), items) > 0.7
    one_code = {i: (torch.zeros(50, dtype=torch.long), table[[0] * 50].double()) for i in items}
    with pytest.raises(MetricUnavailable):
        feed(TokenSensitivity(pair_tm), one_code)


def test_sensitivity_does_not_score_lengths_when_tokens_say_nothing():
    table = torch.randn(2, 8, generator=torch.Generator().manual_seed(2))
    lengths = [50, 60, 80, 100, 130, 170]
    # TM-scores that fall with the length difference: charged end gaps would correlate with them
    pair_tm = {f"c{a}|c{b}": 1 / (1 + abs(lengths[a] - lengths[b]) / 10)
               for a in range(len(lengths)) for b in range(a + 1, len(lengths))}
    two_codes = {f"c{i}": coded(np.arange(n) % 2, table) for i, n in enumerate(lengths)}  # one repeated motif
    with pytest.raises(MetricUnavailable, match="align equally well"):  # every pair aligns perfectly: no ranking
        feed(TokenSensitivity(pair_tm), two_codes)
