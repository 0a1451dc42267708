"""ProVQ (submissions/provq): the hardness schedule's endpoints and shape, hard eval output,
gradients at every hardness, and that the harness's own train loop drives the schedule."""
import math

import pytest
import torch
from torch import nn

from vqbench.families import Setup
from vqbench.submissions import get_submission
from vqbench.tasks import TrainSpec
from vqbench.train import train


def build(dim=8, codebook_size=64, **params):
    torch.manual_seed(0)
    return get_submission("provq").quantizer_class()(dim, codebook_size, **params)


def hardness(q, step, total):
    q.schedule(step, total)
    return float(q.hardness)


def test_schedule_endpoints_cosine_shape_and_monotone():
    q = build()
    assert q.anneal_fraction == 0.1  # the authors' protein config anneals 10,000 of 108,530 steps
    assert hardness(q, 0, 1000) == 0.0  # continuous at the start
    assert hardness(q, 100, 1000) == 1.0  # hard from anneal_fraction on
    assert hardness(q, 999, 1000) == 1.0
    assert hardness(q, 50, 1000) == pytest.approx(0.5)  # cosine midpoint
    assert hardness(q, 20, 1000) == pytest.approx((1 - math.cos(math.pi * 0.2)) / 2)  # flat start: < 0.1
    hs = [hardness(q, t, 1000) for t in range(1000)]
    assert all(a <= b for a, b in zip(hs, hs[1:]))
    q = build(anneal_fraction=1.0)
    assert hardness(q, 999, 1000) < 1.0 and hardness(q, 500, 1000) == pytest.approx(0.5)
    q = build(anneal_fraction=0.0)  # no anneal: plain VQ from step 0
    assert hardness(q, 0, 1000) == 1.0


def test_training_output_is_the_blend_and_eval_is_hard_codes():
    q = build().train()
    z = torch.randn(2, 30, 8)
    q.schedule(0, 100)
    assert torch.equal(q(z).z_q, z)
    q.schedule(5, 100)
    h = float(q.hardness)
    out = q(z)
    codes = q.codebook()[out.codes]
    assert 0 < h < 1 and torch.allclose(out.z_q, (1 - h) * z + h * codes, atol=1e-6)
    q.schedule(0, 100)  # even at hardness 0, eval is hard and decodes bit-exactly
    q.eval()
    out = q(z)
    assert torch.equal(out.z_q, q.decode(out.codes))
    assert out.metrics["hardness"] == 1.0


@pytest.mark.parametrize("step", [0, 10, 25, 60])
def test_gradient_to_z_is_identity_and_codebook_learns_only_from_its_loss(step):
    q = build().train()
    q.schedule(step, 100)
    z = torch.randn(2, 30, 8, requires_grad=True)
    g = torch.randn(2, 30, 8)
    out = q(z)
    (out.z_q * g).sum().backward()  # a downstream loss only, no quantizer loss
    assert torch.allclose(z.grad, g)  # whatever the hardness, the encoder gets the decoder's gradient
    assert q.embed.grad is None or torch.count_nonzero(q.embed.grad) == 0
    z.grad = None
    q(z).loss.backward()  # the codebook + commitment loss moves the chosen codes, from step 0
    assert torch.count_nonzero(q.embed.grad) > 0 and torch.count_nonzero(z.grad) > 0


def test_vq_losses_weigh_half_at_the_start_and_fully_once_hard():
    """The authors' soft loss: (1 - lambda) h + lambda with lambda = 0.5 (loss_floor)."""
    from vqbench.ops import vq_loss

    q = build().train()
    z = torch.randn(2, 30, 8)
    for step, weight in ((0, 0.5), (5, 0.75), (10, 1.0)):
        q.schedule(step, 100)
        out = q(z)
        full = vq_loss(z, q.codebook()[out.codes], q.beta)
        assert float(out.loss) == pytest.approx(weight * float(full), rel=1e-6)


def test_harness_train_loop_drives_the_schedule():
    """The train loop's schedule(step, total_steps) hook is the only source of progress: the logged
    hardness rises from 0 and is 1 from anneal_fraction (0.5 here) on, with no counter inside the quantizer."""
    torch.manual_seed(0)
    dim, steps = 4, 40
    q = build(dim=dim, codebook_size=16, anneal_fraction=0.5)
    setup = Setup(encoder=nn.Linear(dim, dim), decoder=nn.Linear(dim, dim),
                  train_batches=iter(lambda: torch.randn(8, 5, dim), None), eval_batches=lambda: [],
                  reconstruction_loss=nn.functional.mse_loss)

    class Task:
        train = TrainSpec(steps=steps, batch_size=8)

    log = dict((step, m["hardness"]) for step, m in train(setup, [q], Task)["quantizer_log"])
    assert log[0] == 0.0
    assert 0 < log[10] < 1 and log[10] == pytest.approx((1 - math.cos(math.pi * 10 / 20)) / 2)
    assert all(log[s] == 1.0 for s in log if s >= steps // 2)
    assert float(q.hardness) == 1.0
