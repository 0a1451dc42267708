"""The harness's usage curve (train.usage_curve): what the codes emitted during training used, per
window between curve points, counted by the training loop itself, not reported by the quantizer."""
import math

import pytest
import torch
from torch import nn

from vqbench import Quantizer, QuantizerOutput
from vqbench.families import Setup
from vqbench.tasks import TrainSpec
from vqbench.train import CURVE_POINTS, train, window_usage


class Scripted(Quantizer):
    """Emits codes from a script: all K codes equally for the first half of training, then one code
    (a collapse at a known step). depth 2 exercises tuples: the code space is size ** 2."""

    def __init__(self, size=4, depth=1, collapse_at=20):
        super().__init__(4, size)
        self.size, self.depth, self.collapse_at, self.step = size, depth, collapse_at, 0
        self.embed = nn.Parameter(torch.zeros(size, 4))

    def schedule(self, step, total_steps):
        self.step = step

    def codebook(self):
        return self.embed

    def forward(self, z):
        n = z.shape[0] * z.shape[1]
        space = self.size ** self.depth
        joint = torch.arange(n) % space if self.step < self.collapse_at else torch.zeros(n, dtype=torch.long)
        codes = joint.unsqueeze(-1) // self.size ** torch.arange(self.depth) % self.size
        codes = codes.view(*z.shape[:2], self.depth) if self.depth > 1 else codes.view(*z.shape[:2])
        return QuantizerOutput(z + 0 * self.embed.sum(), codes, torch.zeros(()), {})

    def decode(self, codes):
        return self.embed[codes]


@pytest.mark.parametrize("depth", [1, 2])
def test_usage_curve_shows_when_codes_collapse(depth):
    steps = 40
    setup = Setup(encoder=nn.Linear(4, 4), decoder=nn.Linear(4, 4),
                  train_batches=iter(lambda: torch.randn(8, 16, 4), None), eval_batches=lambda: [],
                  reconstruction_loss=nn.functional.mse_loss)

    class Task:
        train = TrainSpec(steps=steps, batch_size=8)

    log = train(setup, [Scripted(depth=depth, collapse_at=steps // 2)], Task)
    curve = log["usage_curve"]
    assert [row[0] for row in curve] == [row[0] for row in log["loss_curve"]]  # the loss curve's steps
    assert len(curve) <= CURVE_POINTS + 1
    for step, utilization, perplexity_ratio in curve:
        if step < steps // 2:  # every code, equally often
            assert utilization == 1.0 and perplexity_ratio == pytest.approx(1.0)
        elif step >= steps // 2 + steps // CURVE_POINTS:  # a whole window after the collapse: one code
            assert utilization == pytest.approx(1 / 4 ** depth) and perplexity_ratio == pytest.approx(1 / 4 ** depth)


def test_window_usage_is_utilization_and_perplexity_over_k():
    counts = torch.tensor([3, 1, 0, 0])
    p = torch.tensor([0.75, 0.25])
    assert window_usage(counts) == [0.5, pytest.approx(math.exp(float(-(p * p.log()).sum())) / 4, abs=1e-6)]


def test_site_draws_the_usage_curve_on_a_fixed_axis_and_nothing_without_one():
    from vqbench.leaderboard.site import usage_sparkline

    full_then_collapsed = usage_sparkline({"usage_curve": [[0, 1.0, 1.0], [10, 0.5, 0.4], [20, 0.0625, 0.0625]]})
    assert "<polyline" in full_then_collapsed and "codes used while training" in full_then_collapsed
    # 0-1 axis (height 36, 2 px margins): utilization 1 at the top (y 2), 0.5 mid-way, 0.0625 at 34 - 32 x 0.0625
    assert 'points="2.0,2.0 80.0,18.0 158.0,32.0"' in full_then_collapsed
    assert usage_sparkline({"loss_curve": [[0, 1.0], [1, 0.5]]}) == ""  # results from before the curve existed
