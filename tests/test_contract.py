"""Contract conformance, parametrized over every registered submission (a new one is tested automatically)."""
from __future__ import annotations

import io
import math

import pytest
import torch

from vqbench import Quantizer, QuantizerOutput
from vqbench.submissions import get_submission, list_submissions


def available(names):
    out = []
    for name in names:
        missing = get_submission(name).missing_requirements()
        mark = pytest.mark.skip(reason=f"{name} needs {', '.join(missing)} (optional extra)") if missing else ()
        out.append(pytest.param(name, marks=mark))
    return out


SUBMISSIONS = available(list_submissions())


def build(name, dim=8, k=256, seed=0):
    torch.manual_seed(seed)
    return get_submission(name).build(dim, k)


@pytest.mark.parametrize("name", SUBMISSIONS)
@pytest.mark.parametrize("k", [256, 1024])
def test_forward_shapes_codes_and_rate(name, k):
    q = build(name, dim=8, k=k)
    assert isinstance(q, Quantizer)
    assert q.bits_per_token <= math.log2(k) + 1e-9, "rate budget exceeded"
    z = torch.randn(3, 5, 8, requires_grad=True)
    for _ in range(3):  # a few training steps so lazy inits (k-means, ...) have happened
        q.train()
        out = q(z)
    assert isinstance(out, QuantizerOutput)
    assert out.z_q.shape == z.shape
    expected = (3, 5) if q.depth == 1 else (3, 5, q.depth)
    assert out.codes.shape == expected and out.codes.dtype == torch.int64
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < q.codebook_size
    loss = torch.as_tensor(out.loss)
    assert loss.dim() == 0 and torch.isfinite(loss)
    (out.z_q.square().sum() + loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0, "no gradient reaches z"


@pytest.mark.parametrize("name", SUBMISSIONS)
def test_decode_equals_zq_in_eval_and_is_deterministic(name):
    q = build(name)
    z = torch.randn(4, 7, 8)
    q.train()
    q(z)
    q.eval()
    with torch.no_grad():
        out = q(z)
        decoded = q.decode(out.codes)
        assert torch.allclose(decoded, out.z_q, atol=1e-5), "decode(codes) differs from z_q in eval mode"
        assert torch.equal(q.decode(out.codes), decoded)
        assert torch.equal(q(z).codes, out.codes)


@pytest.mark.parametrize("name", SUBMISSIONS)
def test_same_seed_same_quantizer_and_state_dict_round_trip(name):
    a, b = build(name, seed=3), build(name, seed=3)
    z = torch.randn(2, 6, 8)
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a(z).codes, b(z).codes)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    c = build(name, seed=99)
    c.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    c.eval()
    with torch.no_grad():
        assert torch.allclose(c(z).z_q, a(z).z_q)


@pytest.mark.parametrize("name", SUBMISSIONS)
@pytest.mark.parametrize("case", ["zeros", "large", "batch1_token1"])
def test_edge_inputs_stay_finite(name, case):
    q = build(name)
    z = {"zeros": torch.zeros(2, 4, 8), "large": 1e3 * torch.randn(2, 4, 8),
         "batch1_token1": torch.randn(1, 1, 8)}[case]
    for mode in (True, False):
        q.train(mode)
        out = q(z)
        assert torch.isfinite(out.z_q).all() and torch.isfinite(torch.as_tensor(out.loss))
        assert torch.isfinite(q.decode(out.codes)).all()


@pytest.mark.parametrize("name", SUBMISSIONS)
def test_codebook_shape_when_given(name):
    q = build(name, dim=8, k=256)
    book = q.codebook()
    if book is not None:
        assert book.dim() == 2 and book.shape[1] == 8 and book.shape[0] <= 256 * max(1, q.depth)
