"""One test per baseline of the property that defines it (the generic contract checks live in
test_contract.py). Small sizes: the whole file runs in seconds on a CPU."""
import dataclasses
import math
import tomllib

import pytest
import torch

from vqbench.ops import nearest_code
from vqbench.paths import project_root
from vqbench.results import provenance
from vqbench.submissions import get_submission
from vqbench.tasks import get_task, list_tasks
from vqbench.validate import smoke_task


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


def test_kmeans_vq_initializes_codebook_to_kmeans_centroids_of_buffered_batches():
    from vqbench.kmeans import quick_kmeans
    q = build("kmeans_vq", codebook_size=16)  # init_multiple 4: k-means once 64 vectors are buffered
    random_init = q.codebook().clone()
    z = torch.cat([torch.randn(50, 8) + 4 * torch.randn(1, 8) for _ in range(4)]).view(2, 100, 8)
    q.train()
    torch.manual_seed(5)
    q(z)
    torch.manual_seed(5)
    assert torch.equal(q.codebook(), quick_kmeans(z, 16, iters=10))
    distortion = lambda cb: nearest_code(z.reshape(-1, 8), cb)[1].mean()
    assert distortion(q.codebook()) < 0.2 * distortion(random_init)


def test_kmeans_vq_buffers_several_times_k_vectors_and_keeps_them_out_of_its_state():
    from vqbench.kmeans import quick_kmeans
    k = 64
    q = build("kmeans_vq", codebook_size=k).train()
    random_init = q.codebook().clone()
    batches = [torch.randn(1, 40, 8) for _ in range(7)]  # 280 vectors: k-means at the 7th (>= 4 x 64)
    for i, b in enumerate(batches[:6]):
        out = q(b)
        assert not q.initialized and torch.equal(q.codebook(), random_init)  # no EMA while buffering
        assert torch.equal(out.codes.flatten(), nearest_code(b.reshape(-1, 8), random_init)[0])
        assert not any(k_ in ("_seen",) for k_ in q.state_dict())  # buffered latents are not state
    seen = torch.cat([b.reshape(-1, 8) for b in batches])
    torch.manual_seed(3)
    q(batches[6])
    assert q.initialized and sum(map(len, q._seen)) == 0
    torch.manual_seed(3)
    assert torch.equal(q.codebook(), quick_kmeans(seen, k, iters=10))  # all 280 >= 4 x K vectors
    assert len(set(map(tuple, q.codebook().tolist()))) == k
    fresh = build("kmeans_vq", codebook_size=k, seed=1)
    fresh.load_state_dict(q.state_dict())
    codes = torch.randint(k, (2, 5))
    assert torch.equal(fresh.decode(codes), q.decode(codes))


def collapse(q, far=10.0):
    """All codes near one far-away point: every z maps to (almost) the same code."""
    with torch.no_grad():
        q.embed.copy_(far + 0.01 * torch.randn_like(q.embed))
        q.embed_sum.copy_(q.embed)


def eval_utilization(q, z):
    q.eval()
    return q(z).codes.unique().numel() / q.codebook_size


def test_reset_vq_revives_dead_codes_from_collapsed_start():
    z = torch.randn(4, 128, 8)
    used = {}
    for name in ("ema_vq", "reset_vq"):
        q = build(name)
        collapse(q)
        assert eval_utilization(q, z) <= 2 / 64
        q.train()
        for _ in range(20):
            q(z)
        used[name] = eval_utilization(q, z)
    assert used["ema_vq"] <= 2 / 64  # the EMA alone cannot bring dead codes back
    assert used["reset_vq"] > 0.5


def test_reset_vq_is_not_capped_when_k_exceeds_the_batch():
    # K = 2,048 codes, 256 tokens per step: the old per-batch rule ("EMA count < 1") re-seeded every
    # code a batch cannot reach each step, capping utilization near 2 x 256 / 2,048 = 25%
    torch.manual_seed(0)
    centres = torch.randn(4096, 8)
    data = lambda n: centres[torch.randint(4096, (n,))] + 0.05 * torch.randn(n, 8)
    q = build("reset_vq", codebook_size=2048).train()
    collapse(q)
    for _ in range(300):
        q(data(256).view(1, 256, 8))
    util = eval_utilization(q, data(32768).view(8, -1, 8))
    assert util > 0.75, util
    assert (q.usage * 2048 >= q.threshold).float().mean() > 0.75  # most codes are no longer dead


def test_provq_soft_early_hard_at_end_and_in_eval():
    q = build("provq").train()
    z = torch.randn(2, 30, 8)
    q.schedule(0, 100)
    assert torch.equal(q(z).z_q, z)  # hardness 0: fully continuous
    q.schedule(5, 100)  # halfway through the anneal (the first 10%): strictly between z and its code
    out = q(z)
    hard = q.codebook()[out.codes]
    assert float(q.hardness) == pytest.approx(0.5)
    assert torch.allclose(out.z_q, 0.5 * z + 0.5 * hard, atol=1e-6)
    for step in (10, 99):  # anneal_fraction 0.1: exactly hard after the first 10%
        q.schedule(step, 100)
        out = q(z)
        assert torch.equal(out.z_q, q.codebook()[out.codes])
    q.schedule(0, 100)
    q.eval()
    out = q(z)
    assert torch.equal(out.z_q, q.decode(out.codes))  # eval is hard whatever the schedule says


def test_fsq_levels_fill_the_budget_of_every_task_k():
    from vqbench.ops import FSQ_LEVELS
    fsq = get_submission("fsq").quantizer_class()
    expected = {2**8: [8, 6, 5], 2**10: [8, 5, 5, 5], 2**12: [8, 8, 8, 8], 2**13: [8, 8, 5, 5, 5],
                2**14: [8, 8, 8, 6, 5], 2**16: [8, 8, 8, 5, 5, 5], 2**18: [8] * 6, 4375: [7, 5, 5, 5, 5],
                3000: [8, 7, 7, 7], 16: [4, 4]}
    for k, levels in expected.items():
        q = fsq(8, k)
        assert q.levels == levels and q.codebook_size == math.prod(levels) <= k
    # the paper's table wherever its entry fits; exactly K where a grid of 5..8 levels reaches it
    assert all(fsq(8, k).levels == v for k, v in FSQ_LEVELS.items() if math.prod(v) <= k)
    assert fsq(8, 2**12).codebook_size == 2**12 and fsq(8, 2**18).codebook_size == 2**18
    task_ks = {t.quantizer.codebook_size for t in list_tasks()} | {smoke_task().quantizer.codebook_size}
    assert {256, 1024, 4096, 16384, 2**18} <= task_ks
    for k in task_ks:  # never more than 0.1 bit of the budget left unused
        assert k * 2 ** -0.1 <= fsq(8, k).codebook_size <= k, k
    q = build("fsq", dim=3, codebook_size=256)  # levels [8, 6, 5]: dim == d, so no projections (the paper)
    assert isinstance(q.project_in, torch.nn.Identity) and isinstance(q.project_out, torch.nn.Identity)
    assert isinstance(build("fsq", dim=4, codebook_size=256).project_in, torch.nn.Linear)
    codes = torch.arange(q.codebook_size)
    decoded = q.decode(codes)
    assert torch.unique(decoded, dim=0).shape[0] == q.codebook_size  # distinct vectors
    # re-encode: inputs that bound() maps onto each grid point give back the same code
    levels = torch.tensor(q.levels)
    digits = (codes.unsqueeze(-1) // q._basis) % levels
    half, offset = (levels - 1) * (1 + q.eps) / 2, (levels % 2 == 0) * 0.5
    x = torch.atanh((digits - levels // 2 + offset) / half) - torch.atanh(offset / half)
    out = q.eval()(x.view(1, -1, 3))
    assert torch.equal(out.codes.flatten(), codes)
    assert torch.equal(out.z_q[0], decoded)


def test_lfq_codes_and_exact_entropy_loss():
    q = build("lfq", codebook_size=100)  # floor(log2 100) = 6 bits
    assert q.bits == 6 and q.codebook_size == 64
    out = q.train()(torch.randn(2, 50, 8) * 10)
    assert out.codes.min() >= 0 and out.codes.max() < 64 and torch.isfinite(out.loss)
    # the factorized entropy equals the brute-force one over all 2^6 codes
    q.temperature = 1.0
    x = torch.randn(100, 6)
    signs = q._bits_to_signs((torch.arange(64).unsqueeze(-1) // q._powers) % 2)
    probs = torch.softmax(2 * x @ signs.T / q.temperature, -1)
    entropy = lambda p: -(p * p.log()).sum(-1)
    brute = entropy(probs).mean() - entropy(probs.mean(0))
    assert torch.allclose(q._entropy_loss(x), brute, atol=1e-4)


def test_rvq_two_levels_of_sqrt_k_spend_the_task_bits():
    q = build("rvq", codebook_size=256).train()
    assert q.depth == 2 and q.depth * math.log2(q.codebook_size) == math.log2(256)
    z = torch.randn(4, 64, 8)
    for _ in range(3):
        q(z)
    out = q.eval()(z)
    assert out.codes.shape == (4, 64, 2) and out.codes.max() < 16
    first = q.embed[0][out.codes[..., 0]]
    assert torch.equal(out.z_q, first + q.embed[1][out.codes[..., 1]])
    assert (z - out.z_q).square().mean() < 0.8 * (z - first).square().mean()  # level 2 refines level 1


def test_rotation_vq_forward_is_nearest_code_but_gradient_is_rotated():
    z = torch.randn(2, 30, 8) * 0.1
    grads, outs = {}, {}
    for name in ("vq", "rotation_vq"):  # same seed: same uniform(-1/K, 1/K) codebook
        q = build(name)
        zz = z.clone().requires_grad_()
        out = q(zz)
        (out.z_q * torch.linspace(-1, 1, 8)).sum().backward()
        grads[name], outs[name] = zz.grad, out
    assert torch.equal(outs["vq"].z_q, outs["rotation_vq"].z_q)
    assert torch.equal(outs["vq"].codes, outs["rotation_vq"].codes)
    assert torch.equal(grads["vq"], torch.linspace(-1, 1, 8).expand(2, 30, 8))  # straight-through: copied
    assert not torch.allclose(grads["rotation_vq"], grads["vq"], atol=1e-3)
    # a rotation times |q|/|e|: the gradient norm is rescaled by |q|/|e| per token
    ratio = grads["rotation_vq"].norm(dim=-1) / grads["vq"].norm(dim=-1)
    assert torch.allclose(ratio, outs["vq"].z_q.norm(dim=-1) / z.norm(dim=-1), rtol=1e-4)


def test_gumbel_vq_anneals_temperature_and_trains_on_hard_samples():
    q = build("gumbel_vq").train()
    taus = []
    for step in range(0, 100, 10):
        q.schedule(step, 100)
        taus.append(float(q.tau))
    assert taus[0] == pytest.approx(1.0) and taus[-1] == pytest.approx(1 / 16)
    assert all(a >= b for a, b in zip(taus, taus[1:])) and taus[2] < 1.0
    q.schedule(0, 100)
    rows = q.codebook().detach()
    z = torch.randn(2, 30, 8, requires_grad=True)
    torch.manual_seed(7)
    out = q(z)
    # training emits one code vector per token, the sampled one (straight-through, taming's default)
    assert torch.equal(out.z_q.detach(), rows[out.codes])
    assert not torch.equal(out.codes, q.proj(z).argmax(-1))  # sampled with Gumbel noise, not the mode
    weights = torch.randn(2, 30, 8)
    (out.z_q * weights).sum().backward()
    # the same gradients as F.gumbel_softmax(hard=True) @ embed with the same noise
    ref = build("gumbel_vq").train()
    zz = z.detach().clone().requires_grad_()
    torch.manual_seed(7)
    one_hot = torch.nn.functional.gumbel_softmax(ref.proj(zz), tau=1.0, hard=True, dim=-1)
    assert torch.equal(one_hot.argmax(-1), out.codes)
    (one_hot @ ref.embed * weights).sum().backward()
    assert torch.allclose(z.grad, zz.grad, atol=1e-5)
    assert torch.allclose(q.proj.weight.grad, ref.proj.weight.grad, atol=1e-5)
    assert torch.allclose(q.embed.grad, ref.embed.grad, atol=1e-5)
    out = q.eval()(z)
    assert torch.equal(out.z_q, rows[q.proj(z).argmax(-1)])  # eval: the mode, deterministic


def test_cvq_moves_unused_codes_to_anchors():
    q = build("cvq")
    with torch.no_grad():
        q.embed.copy_(torch.randn(64, 8))
    z = torch.randn(2, 100, 8) + 5  # a cluster only a few codes point at
    before = q.codebook().detach().clone()
    q.train()
    out = q(z)
    used = torch.zeros(64, dtype=torch.bool)
    used[out.codes.unique()] = True
    after = q.codebook().detach()
    flat = z.reshape(-1, 8)
    cos = torch.nn.functional.normalize(before, dim=1) @ torch.nn.functional.normalize(flat, dim=1).T
    anchors = flat[cos.argmax(1)]  # for every code, the most similar feature in the batch
    assert torch.allclose(after[~used], anchors[~used], atol=0.05)  # dead codes jump (alpha ~ 1)
    assert (after[used] - before[used]).norm(dim=1).max() < 0.05 * (anchors[used] - before[used]).norm(dim=1).min()
    q.eval()
    assert eval_utilization(q, z) > 3 * used.float().mean()


def test_external_fsq_matches_zoo_fsq():
    pytest.importorskip("vector_quantize_pytorch", reason="optional extra: pip install 'vqbench[external]'")
    ours, ext = build("fsq", dim=16, codebook_size=2**10), build("ext_vqpytorch_fsq", dim=16, codebook_size=2**10)
    assert ext.codebook_size == ours.codebook_size == 1000
    with torch.no_grad():  # same projections -> the two implementations must emit the same codes
        for a, b in ((ours.project_in, ext.module.project_in), (ours.project_out, ext.module.project_out)):
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)
    z = torch.randn(2, 200, 16) * 3
    o, e = ours.eval()(z), ext.eval()(z)
    assert torch.equal(o.codes, e.codes)
    assert torch.allclose(o.z_q, e.z_q, atol=1e-5)
    assert torch.equal(e.z_q, ext.decode(e.codes))
    assert torch.allclose(ext.codebook(), ours.codebook(), atol=1e-5)
    # dim == d (synthetic/code-dim@dim=4): neither projects, so the codes agree with no weights copied
    ours, ext = build("fsq", dim=4, codebook_size=2**10), build("ext_vqpytorch_fsq", dim=4, codebook_size=2**10)
    z = torch.randn(2, 200, 4) * 3
    assert torch.equal(ours.eval()(z).codes, ext.eval()(z).codes) and len(list(ours.parameters())) == 0


@pytest.mark.parametrize("name", ["ext_vqpytorch_fsq", "ext_vqpytorch_rvq", "ext_vqpytorch_simvq"])
def test_external_quantizers_do_not_depend_on_how_tokens_are_batched(name):
    """One token per item (synthetic tasks) and a sequence per item (images) are the same tokens: the
    adapter must give the same codes and shapes, whichever axis the library reads as the sequence."""
    pytest.importorskip("vector_quantize_pytorch", reason="optional extra: pip install 'vqbench[external]'")
    q = build(name, dim=8, codebook_size=256).eval()
    z = torch.randn(96, 8)
    per_item, as_sequence = q(z.view(96, 1, 8)), q(z.view(4, 24, 8))
    assert per_item.z_q.shape == (96, 1, 8) and per_item.codes.shape[:2] == (96, 1)
    assert torch.equal(per_item.codes.flatten(0, 1), as_sequence.codes.flatten(0, 1))
    assert torch.allclose(per_item.z_q.view(96, 8), as_sequence.z_q.view(96, 8))


def test_external_residual_vq_and_simvq_follow_the_contract():
    pytest.importorskip("vector_quantize_pytorch", reason="optional extra: pip install 'vqbench[external]'")
    z = torch.randn(4, 64, 8, requires_grad=True)
    rvq = build("ext_vqpytorch_rvq", codebook_size=256).train()
    assert rvq.depth == 2 and rvq.codebook_size == 16
    out = rvq(z)
    assert out.codes.shape == (4, 64, 2) and out.loss.dim() == 0
    (out.z_q.sum() + out.loss).backward()
    assert z.grad.abs().sum() > 0
    out = rvq.eval()(z)
    assert torch.equal(out.z_q, rvq.decode(out.codes)) and rvq.codebook().shape == (256, 8)

    simvq = build("ext_vqpytorch_simvq").train()
    frozen = simvq.module.frozen_codebook.clone()
    opt = torch.optim.Adam(simvq.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        out = simvq(z.detach() + 2)
        (out.z_q.square().mean() + out.loss).backward()
        opt.step()
    assert torch.equal(simvq.module.frozen_codebook, frozen)
    out = simvq.eval()(z)
    assert torch.equal(out.z_q, simvq.decode(out.codes))
    assert torch.equal(out.z_q.detach(), simvq.codebook()[out.codes])


def test_external_submissions_pin_and_record_the_wrapped_library_version(tmp_path):
    extra = tomllib.loads((project_root() / "pyproject.toml").read_text())["project"]["optional-dependencies"]["external"]
    pin = next(r.split("==")[1] for r in extra if r.startswith("vector-quantize-pytorch=="))
    for name in ("ext_vqpytorch_fsq", "ext_vqpytorch_rvq", "ext_vqpytorch_simvq"):
        sub = get_submission(name)
        assert sub.meta.requires == [f"vector_quantize_pytorch=={pin}"]  # the pin is hashed with the yaml
    pytest.importorskip("vector_quantize_pytorch", reason="optional extra: pip install 'vqbench[external]'")
    sub = get_submission("ext_vqpytorch_fsq")
    assert sub.missing_requirements() == [] and sub.package_versions() == {"vector-quantize-pytorch": pin}
    other = dataclasses.replace(sub, meta=dataclasses.replace(sub.meta, requires=["vector_quantize_pytorch==0.0.1"]))
    assert other.missing_requirements() == ["vector_quantize_pytorch==0.0.1"]  # another version installed
    prov = provenance(tmp_path, "h", get_task("synthetic/codebook-scaling@codebook_size=256"), "cpu", 1.0, "serial",
                      sub.package_versions())
    assert prov["packages"]["vector-quantize-pytorch"] == pin and "torch" in prov["packages"]
