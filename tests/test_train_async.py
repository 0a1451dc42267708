"""The training loop's GPU-side habits, checked where they can be on a CPU (and on CUDA where it
exists): checks read late still name the first bad step, batches reach the device in order, usage
logs are read only at curve points, and a code space too large to count still trains."""
import pytest
import torch
from torch import nn

import vqbench.train as train_module
from vqbench import Quantizer, QuantizerOutput
from vqbench.enforce import JobFailure
from vqbench.families import Setup, endless, to_device
from vqbench.ops import usage_metrics
from vqbench.tasks import TrainSpec
from vqbench.train import StepChecks, loggable, train

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def late_checks() -> StepChecks:
    checks = StepChecks(torch.device("cpu"), [8])
    checks.every_step = False  # what CUDA does: keep the evidence, read it at flush()
    return checks


def test_late_checks_name_the_first_bad_step_and_nothing_before_flush():
    checks, fine = late_checks(), torch.tensor(0.5)
    checks.add(0, [torch.tensor([[0, 7]])], fine, 0.0, fine)
    checks.add(1, [torch.tensor([[3, 9]])], fine, 0.0, fine)  # code 9 of 8
    checks.add(2, [torch.tensor([[-1, 2]])], fine, 0.0, fine)
    with pytest.raises(JobFailure, match=r"^training step 1: codes outside \[0, 8\): min 3, max 9$"):
        checks.flush()
    assert checks.pending == []


def test_late_checks_report_a_non_finite_loss_with_its_parts():
    checks, nan = late_checks(), torch.tensor(float("nan"))
    checks.add(0, [torch.tensor([[1]])], torch.tensor(0.5), torch.tensor(0.25), torch.tensor(0.75))
    checks.add(4, [torch.tensor([[1]])], nan, torch.tensor(0.25), nan)
    with pytest.raises(JobFailure, match=r"^non-finite loss at training step 4: reconstruction nan, quantizer loss 0.25$"):
        checks.flush()


def test_late_checks_name_the_level_of_a_hierarchical_model():
    checks, fine = StepChecks(torch.device("cpu"), [4, 8]), torch.tensor(0.5)
    checks.every_step = False
    checks.add(0, [torch.tensor([[3]]), torch.tensor([[7]])], fine, 0.0, fine)  # each level within its own K
    checks.add(1, [torch.tensor([[3]]), torch.tensor([[8]])], fine, 0.0, fine)  # the second level's K is 8
    with pytest.raises(JobFailure, match=r"^training step 1, level 1: codes outside \[0, 8\): min 8, max 8$"):
        checks.flush()


def test_cpu_checks_fail_at_the_step_itself():
    checks = StepChecks(torch.device("cpu"), [4])
    with pytest.raises(JobFailure, match="training step 3: codes outside"):
        checks.add(3, [torch.tensor([[4]])], torch.tensor(0.1), 0.0, torch.tensor(0.1))


def test_usage_logs_stay_tensors_until_the_loop_reads_them():
    idx = torch.tensor([0, 0, 1, 3])
    logged = usage_metrics(idx, 8)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in logged.values())
    p = torch.tensor([0.5, 0.25, 0.25])
    assert loggable(logged) == {"perplexity": pytest.approx(float(torch.exp(-(p * p.log()).sum()))), "used": 3 / 8}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_to_device_keeps_the_seeded_order(device):
    def stream():
        return endless(lambda g: torch.randn(4, 3, generator=g), seed=7)

    expected = [x for x, _ in zip(stream(), range(5))]
    moved = to_device(stream(), device)
    got = [next(moved) for _ in range(5)]
    assert all(g.device.type == device and torch.equal(g.cpu(), e) for g, e in zip(got, expected))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_to_device_raises_the_streams_error_where_the_batch_is_asked_for(device):
    def broken():
        yield torch.zeros(2)
        raise ValueError("bad file 3")

    moved = to_device(broken(), device)
    next(moved)
    with pytest.raises(ValueError, match="bad file 3"):
        next(moved)


class Identity(Quantizer):
    def __init__(self):
        super().__init__(4, 16)
        self.scale = nn.Parameter(torch.ones(()))

    def codebook(self):
        return torch.zeros(16, 4)

    def forward(self, z):
        return QuantizerOutput(z * self.scale, torch.zeros(z.shape[:2], dtype=torch.long), torch.zeros(()), {})

    def decode(self, codes):
        return torch.zeros(*codes.shape, 4)


def test_a_code_space_too_large_to_count_still_trains(monkeypatch):
    """Above USAGE_MAX_CODES the loop does not count codes; it must still decode and step."""
    monkeypatch.setattr(train_module, "USAGE_MAX_CODES", 8)  # 16 codes: too many to count
    setup = Setup(encoder=nn.Linear(4, 4), decoder=nn.Linear(4, 4),
                  train_batches=iter(lambda: torch.randn(2, 5, 4), None), eval_batches=lambda: [],
                  reconstruction_loss=nn.functional.mse_loss)

    class Task:
        train = TrainSpec(steps=10, batch_size=2)

    log = train(setup, [Identity()], Task)
    assert log["usage_curve"] == [] and len(log["loss_curve"]) == 10
