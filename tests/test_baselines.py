"""One test per baseline of the property that defines it (the generic contract checks live in
test_contract.py). Small sizes: the whole file runs in seconds on a CPU."""
import math

import pytest
import torch

from vqbench.ops import nearest_code
from vqbench.submissions import get_submission


def build(name, dim=8, codebook_size=64, seed=0):
    torch.manual_seed(seed)
    return get_submission(name).build(dim, codebook_size)


def test_vq_outputs_nearest_codebook_rows_and_learns_codebook():
    q = build("vq")
    z = torch.randn(2, 30, 8)
    out = q(z)
    cb = q.codebook().detach()
    assert torch.equal(out.z_q, cb[out.codes])
    assert torch.equal(out.codes.flatten(), torch.cdist(z.reshape(-1, 8), cb).argmin(1))
    # the codebook loss (not the straight-through path) moves the chosen codes toward z
    opt = torch.optim.SGD(q.parameters(), lr=50.0)  # mean-squared loss: tiny per-code gradients
    before = (z.reshape(-1, 8) - cb[out.codes.flatten()]).square().sum()
    for _ in range(5):
        opt.zero_grad()
        q(z).loss.backward()
        opt.step()
    after = (z.reshape(-1, 8) - q.codebook().detach()[out.codes.flatten()]).square().sum()
    assert after < 0.9 * before


def test_ema_vq_moves_codes_to_assigned_means_without_gradients():
    q = build("ema_vq")
    assert not any(p.requires_grad for p in q.parameters())
    cb0 = q.codebook().clone()
    z = cb0[3] + 0.1 * torch.randn(1, 100, 8)  # every vector is assigned to code 3
    q.train()
    out = q(z)
    assert (out.codes == 3).all()
    # one EMA step: sum_3 = 0.99 e_3 + 0.01 sum z, count_3 = 0.99 * 1 + 0.01 * 100 (init count 1)
    expected = (0.99 * cb0[3] + 0.01 * z.reshape(-1, 8).sum(0)) / (0.99 + 0.01 * 100)
    assert torch.allclose(q.codebook()[3], expected, atol=1e-3)
    for _ in range(300):
        q(z)
    assert torch.allclose(q.codebook()[3], z.reshape(-1, 8).mean(0), atol=1e-3)
    others = torch.arange(64) != 3  # unused codes stay put (up to Laplace smoothing)
    assert torch.allclose(q.codebook()[others], cb0[others], rtol=1e-3)
    q.eval()
    frozen = q.codebook().clone()
    q(z + 5)
    assert torch.equal(q.codebook(), frozen)  # no EMA update in eval mode


def test_simvq_trains_w_not_basis_and_moves_every_code():
    q = build("simvq")
    assert "basis" not in dict(q.named_parameters()) and not q.basis.requires_grad
    basis, w, cb0 = q.basis.clone(), q.proj.weight.detach().clone(), q.codebook().detach().clone()
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    z = 3 + torch.randn(4, 32, 8)
    used = set()
    for _ in range(20):
        opt.zero_grad()
        out = q(z)
        used |= set(out.codes.flatten().tolist())
        out.loss.backward()
        opt.step()
    assert torch.equal(q.basis, basis)
    assert not torch.allclose(q.proj.weight, w)
    unused = torch.tensor(sorted(set(range(64)) - used))
    assert len(unused) > 0
    # codes never selected moved too: the linear layer updates the whole codebook at once
    assert (q.codebook().detach()[unused] - cb0[unused]).norm(dim=1).min() > 1e-3
    out = q(z)
    assert torch.equal(out.z_q.detach(), q.codebook().detach()[out.codes])
