"""Every check `vqbench validate` runs on a quantizer (validate.CONTRACT_CHECKS), and every way the
training loop and the job's stages (vqbench/train.py, enforce.py, stages.py) refuse one, has a
fixture that fails it; each asserts its exact reason. A check or a refusal added without a fixture
fails here.

Fixtures are tiny Quantizer classes (GoodVQ with one defect), passed to the checks through a
build(seed) callable as `vqbench validate` does (validate.builder), which is far faster than
submission folders; the runner path is covered by tests/test_faults.py and tests/test_validate.py.
"""
from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import vqbench.enforce
import vqbench.stages
import vqbench.train
from vqbench.checks import CONTRACT_CHECKS
from vqbench.contract import Quantizer, QuantizerOutput
from vqbench.enforce import JobFailure, check_rate
from vqbench.families import Setup
from vqbench.metrics import METRICS, MeanSquaredError, MetricUnavailable
from vqbench.ops import nearest_code, straight_through, vq_loss
from vqbench.stages import decode, encode, from_bytes, to_bytes
from vqbench.train import seed_everything, train

# Fixtures with a wrong shape reach the commitment loss, where torch warns about broadcasting: expected.
pytestmark = [pytest.mark.filterwarnings("ignore:Using a target size:UserWarning"),
              pytest.mark.usefixtures("one_torch_thread")]

DIM, K = 4, 16
NUMBER = "{n}"  # in an expected reason: any number (a max difference that depends on float details)


class GoodVQ(Quantizer):
    """Nearest code, straight-through, commitment loss: passes every check. Each fixture below
    overrides one thing."""

    def __init__(self, dim: int, codebook_size: int):
        super().__init__(dim, codebook_size)
        self.embed = nn.Parameter(torch.randn(codebook_size, dim))

    def assign(self, z):
        return nearest_code(z.detach(), self.embed.detach())[0].view(z.shape[:2])

    def forward(self, z):
        codes = self.assign(z)
        z_q = self.decode(codes)
        return QuantizerOutput(straight_through(z, z_q), codes, vq_loss(z, z_q))

    def decode(self, codes):
        return self.embed[codes]

    def codebook(self):
        return self.embed


# -------------------------------------------------------------------------------- the fixtures

class DeclaresTooManyCodes(GoodVQ):
    def __init__(self, dim, codebook_size):
        super().__init__(dim, codebook_size)
        self.codebook_size = 2 * codebook_size


class FloatCodebookSize(GoodVQ):
    def __init__(self, dim, codebook_size):
        super().__init__(dim, codebook_size)
        self.codebook_size = float(codebook_size)


class WidensRateInEval(GoodVQ):
    def train(self, mode=True):
        self.codebook_size = K if mode else K * K
        return super().train(mode)


class ShrinksRateInEval(GoodVQ):
    def train(self, mode=True):
        self.codebook_size = K if mode else K // 2
        return super().train(mode)


class ReturnsATuple(GoodVQ):
    def forward(self, z):
        out = super().forward(z)
        return out.z_q, out.codes, out.loss


class ZqIsAParameter(GoodVQ):
    def forward(self, z):
        out = super().forward(z)
        out.z_q = nn.Parameter(out.z_q.detach())
        return out


class DropsTokens(GoodVQ):
    def forward(self, z):
        out = super().forward(z)
        out.z_q = out.z_q[:, :1]
        return out


class FloatCodes(GoodVQ):
    def forward(self, z):
        out = super().forward(z)
        out.codes = out.codes.float()
        return out


class FlatCodes(GoodVQ):
    def forward(self, z):
        out = super().forward(z)
        out.codes = out.codes.flatten()
        return out


class CodesPastK(GoodVQ):
    def assign(self, z):
        return torch.full(z.shape[:2], K)

    def decode(self, codes):
        return self.embed[codes % K]


class LossPerBatch(GoodVQ):
    def forward(self, z):
        out = super().forward(z)
        out.loss = torch.ones(2)
        return out


class NoStraightThrough(GoodVQ):
    def forward(self, z):
        out = super().forward(z)
        out.z_q = self.decode(out.codes)
        return out


class DecodeOffByOne(GoodVQ):
    """z_q is the code vector, decode() is not: the harness would score something else than training saw."""

    def forward(self, z):
        out = super().forward(z)
        out.z_q = straight_through(z, self.embed[out.codes])
        return out

    def decode(self, codes):
        return self.embed[codes] + 1


class FloatCodesInEval(GoodVQ):
    def forward(self, z):
        out = super().forward(z)
        out.codes = out.codes if self.training else out.codes.float()
        return out


class CodesPastKInEval(CodesPastK):
    def assign(self, z):
        return GoodVQ.assign(self, z) if self.training else torch.full(z.shape[:2], K)


class RandomCodesInEval(GoodVQ):
    def assign(self, z):
        return super().assign(z) if self.training else torch.randint(K, z.shape[:2])


class DecodeDependsOnBatchIndex(GoodVQ):
    def decode(self, codes):
        shift = torch.arange(codes.shape[0])[:, None, None] if codes.shape[1] > 1 else 0  # one token each: honest
        return self.embed[codes] + shift


class DecodeDependsOnPosition(GoodVQ):
    def decode(self, codes):
        return self.embed[codes] + torch.arange(codes.shape[1])[None, :, None]


class DecodeDependsOnOrder(GoodVQ):
    def decode(self, codes):
        return self.embed[codes] + float(codes.flatten()[0] == 0)  # a batch starting with code 0 decodes shifted


class DecodeWithoutTokenAxis(GoodVQ):
    def decode(self, codes):
        return self.embed[codes].squeeze(1)


class DecodeNaNForLastCode(GoodVQ):
    def decode(self, codes):
        return torch.where((codes == K - 1)[..., None], float("nan"), self.embed[codes])


class RemembersLastInput(GoodVQ):
    """decode() adds the mean of what forward() saw last: z_q == decode(codes) right after a forward."""

    def forward(self, z):
        self.offset = float(z.detach().mean())
        return super().forward(z)

    def decode(self, codes):
        return self.embed[codes] + getattr(self, "offset", 0.0)


class SharesLastInputAcrossCopies(GoodVQ):
    """The same through a class attribute, which the harness's deep copy shares (vqbench.train.evaluate)."""

    offset = 0.0

    def forward(self, z):
        type(self).offset = float(z.detach().mean())
        return super().forward(z)

    def decode(self, codes):
        return self.embed[codes] + type(self).offset


class ChangesSizeInEval(GoodVQ):
    """Declares 16 codes in training and 8 in eval (within budget, but not what was declared)."""

    def train(self, mode=True):
        self.codebook_size = K if mode else K // 2
        return super().train(mode)


class SizeDependsOnInstance(GoodVQ):
    """The first instance built declares 16 codes, later ones 8: a copy that loads the trained state
    is not the quantizer that was trained."""

    built = 0

    def __init__(self, dim, codebook_size):
        super().__init__(dim, codebook_size)
        type(self).built += 1
        if type(self).built % 2 == 0:
            self.codebook_size = K // 2


class ExtraStateObject(GoodVQ):
    def get_extra_state(self):
        return SimpleNamespace(secret="not a tensor")

    def set_extra_state(self, state):
        pass


class PassesZThroughInEval(GoodVQ):
    def forward(self, z):
        out = super().forward(z)
        if not self.training:
            out.z_q = z
        return out


class DividesByNorm(GoodVQ):
    def forward(self, z):
        out = super().forward(z)
        out.loss = out.loss + 0 * (z / z.norm(dim=-1, keepdim=True)).sum()  # zeros in: NaN out
        return out


class UnseededInit(GoodVQ):
    def __init__(self, dim, codebook_size):
        super().__init__(dim, codebook_size)
        gen = torch.Generator()
        gen.seed()  # from the OS, not from the seed the harness set
        with torch.no_grad():
            self.embed.copy_(torch.randn(codebook_size, dim, generator=gen))


class CodebookNotInStateDict(GoodVQ):
    def __init__(self, dim, codebook_size):
        super().__init__(dim, codebook_size)
        del self.embed
        self.embed = torch.randn(codebook_size, dim)  # a plain attribute: not saved, not loaded


class CodebookOfWrongWidth(GoodVQ):
    def codebook(self):
        return self.embed[:, :2]


class CodebookOfTooManyRows(GoodVQ):
    def codebook(self):
        return torch.cat([self.embed, self.embed])


@dataclass(frozen=True)
class Case:
    check: str  # start of a CONTRACT_CHECKS title
    quantizer: type
    reason: str  # exact, NUMBER standing for any number

    def __str__(self):
        return self.quantizer.__name__


CONTRACT_CASES = [
    Case("rate", DeclaresTooManyCodes, "train mode: rate budget exceeded: 5.000 bits/token > log2(K) = 4.000 "
                                       "(depth 1 x codebook 32)"),
    Case("rate", FloatCodebookSize, "train mode: codebook_size and depth must be ints >= 2 and >= 1, got 16.0 and 1"),
    Case("rate", WidensRateInEval, "eval mode: rate budget exceeded: 8.000 bits/token > log2(K) = 4.000 "
                                   "(depth 1 x codebook 256)"),
    Case("rate", ShrinksRateInEval, "codebook_size/depth change with eval(): (16, 1) -> (8, 1)"),
    Case("forward", ReturnsATuple, "train mode: forward() returned tuple, not QuantizerOutput"),
    Case("forward", ZqIsAParameter, "train mode: z_q must be a torch.Tensor, got Parameter"),
    Case("forward", DropsTokens, "train mode: z_q has shape (3, 1, 4), expected (3, 5, 4)"),
    Case("forward", FloatCodes, "train mode: codes must be an int64 tensor, got torch.float32"),
    Case("forward", FlatCodes, "train mode: codes have shape (15,), expected (3, 5)"),
    Case("forward", CodesPastK, "train mode: codes outside [0, 16): min 16, max 16"),
    Case("forward", LossPerBatch, "loss must be a finite scalar, got shape (2,) value tensor([1., 1.])"),
    Case("gradient", NoStraightThrough, "no gradient reaches z through z_q (use a straight-through estimator or better)"),
    Case("decode(codes) equals", DecodeOffByOne, "decode(codes) differs from z_q in eval mode (max difference 1); the "
                                                 "harness reconstructs from decode(codes) only"),
    Case("decode(codes) equals", RandomCodesInEval, "eval-mode codes differ between two forwards of the same z"),
    Case("decode is a pure", DecodeDependsOnOrder, "decode(codes) is not a pure function of codes: the same codes "
                                                   "decoded in another order or batch give other vectors (max difference 1)"),
    Case("decode is a pure", DecodeDependsOnBatchIndex, "decode depends on batch order: decode(codes[perm]) != "
                                                        "decode(codes)[perm] (max difference {n})"),
    Case("decode is a pure", DecodeDependsOnPosition, "decode is not per-token: {n} distinct codes decode to {n} distinct "
                                                      "vectors (max difference {n} from each code decoded alone)"),
    Case("decode is a pure", DecodeWithoutTokenAxis, "decode(codes) of shape (16, 1) returned (16, 4), expected (16, 1, 4)"),
    Case("decode is a pure", DecodeNaNForLastCode, "decode(codes) returns non-finite vectors for some codes"),
    Case("decode ignores", RemembersLastInput, "decode(codes) changed after forward() saw other inputs (max difference "
                                               "{n}): decode must depend on codes and trained weights only"),
    Case("edge inputs", DividesByNorm, "zeros input, train mode: z_q or loss is not finite"),
    Case("deterministic", UnseededInit, "two quantizers built and trained under the same seed give different codes or z_q"),
    Case("state_dict", CodebookNotInStateDict, "a quantizer loaded from another's state_dict quantizes differently: keep "
                                               "all state in parameters and registered buffers"),
    Case("codebook()", CodebookOfWrongWidth, "codebook() must be (at most K x depth, 4), got (16, 2)"),
    Case("codebook()", CodebookOfTooManyRows, "codebook() must be (at most K x depth, 4), got (32, 4)"),
]
# Checks a fixture also fails, besides its own. The rate and the forward output are gates that most
# checks pass through (check_rate, check_output), so a defect there shows in each; the others are noted.
RATE_GATE = {"forward", "decode(codes) equals", "decode is a pure", "decode ignores", "edge inputs"}
OUTPUT_GATE = {"decode(codes) equals", "decode ignores", "edge inputs"}
ALSO_FAILS = {
    DeclaresTooManyCodes: RATE_GATE, FloatCodebookSize: RATE_GATE,
    ReturnsATuple: OUTPUT_GATE | {"gradient", "deterministic", "state_dict"},  # they read out.z_q, out.codes
    ZqIsAParameter: OUTPUT_GATE | {"gradient"},  # a fresh Parameter is cut off from z
    DropsTokens: OUTPUT_GATE, FlatCodes: OUTPUT_GATE, CodesPastK: OUTPUT_GATE,
    FloatCodes: OUTPUT_GATE | {"state_dict"},  # decode(float codes) cannot index
    RandomCodesInEval: {"state_dict"},  # two quantizers draw different random codes
    DecodeWithoutTokenAxis: {"edge inputs"},  # one-token inputs: z_q loses its token axis
    DecodeNaNForLastCode: {"edge inputs", "deterministic", "state_dict"},  # code 15 is used: NaN z_q
}


def build(cls: type):
    """What validate.builder gives the checks: a fresh quantizer under the global seed."""
    def make(seed: int) -> Quantizer:
        seed_everything(seed)
        return cls(DIM, K)
    return make


def contract_check(start: str):
    return next(check for title, check in CONTRACT_CHECKS if title.startswith(start))


def assert_reason(actual: str, expected: str) -> None:
    pattern = re.escape(expected).replace(re.escape(NUMBER), r"[-+0-9.e]+")
    assert re.fullmatch(pattern, actual), f"\n  got:      {actual}\n  expected: {expected}"


def failures(cls: type) -> dict[str, str]:
    """Every contract check this quantizer fails: title -> reason."""
    out = {}
    for title, check in CONTRACT_CHECKS:
        try:
            check(build(cls), DIM, K)
        except Exception as e:  # JobFailure, or the quantizer's own error: validate reports both
            out[title] = str(e)
    return out


def test_the_good_quantizer_passes_every_check():
    assert failures(GoodVQ) == {}


@pytest.mark.parametrize("case", CONTRACT_CASES, ids=str)
def test_fixture_fails_its_check_with_its_reason(case):
    with pytest.raises(JobFailure) as e:
        contract_check(case.check)(build(case.quantizer), DIM, K)
    assert_reason(str(e.value), case.reason)


@pytest.mark.parametrize("case", CONTRACT_CASES, ids=str)
def test_fixture_fails_no_check_it_should_pass(case):
    """So each check is tested on its own defect, not on one that another check catches first."""
    expected = {title for title, _ in CONTRACT_CHECKS
                if title.startswith((case.check, *ALSO_FAILS.get(case.quantizer, ())))}
    assert set(failures(case.quantizer)) == expected


def test_every_contract_check_has_a_failing_fixture():
    covered = {title for title, _ in CONTRACT_CHECKS for case in CONTRACT_CASES if title.startswith(case.check)}
    assert covered == {title for title, _ in CONTRACT_CHECKS}


# ---------------------------------------------------------------------------- the evaluation

TASK = SimpleNamespace(quantizer=SimpleNamespace(dim=DIM, codebook_size=K, level_sizes=[K]), metrics=("mse",),
                       train=SimpleNamespace(steps=3, optimizer="adam", lr=1e-2, weight_decay=0.0, amp=False,
                                             grad_clip=None))


class Tokens(nn.Module):
    """The identity on (batch, tokens, dim): the quantizer sees the data, the decoder returns z_hat."""

    def forward(self, x):
        return x


def tiny_setup() -> Setup:
    gen = torch.Generator().manual_seed(7)
    eval_set = torch.randn(3, 8, 5, DIM, generator=gen)  # three eval batches of (8, 5, DIM)
    return Setup(encoder=Tokens(), decoder=Tokens(), train_batches=iter(torch.randn(3, 8, 5, DIM, generator=gen)),
                 eval_batches=lambda: iter(eval_set), reconstruction_loss=nn.functional.mse_loss)


def trained(cls: type) -> tuple[Setup, Quantizer]:
    setup, q = tiny_setup(), build(cls)(0)
    q.declared = check_rate(q, K)  # what stage 1 reads back before training
    train(setup, [q], TASK)
    return setup, q


def evaluate(setup: Setup, q: Quantizer, task=TASK, fidelity=None):
    """A job's evaluation in one process: encode with the trained quantizer (stage 1), decode with a
    fresh one that loaded its state and never ran forward() (stage 2), score (stage 3)."""
    size, depth = getattr(q, "declared", None) or check_rate(q, K)
    q.eval()
    codes = encode(setup, [q], task, [(size, depth)])
    fresh = build(type(q))(0)
    fresh.load_state_dict(from_bytes(to_bytes(q.state_dict()), "the quantizer's state_dict"))
    fresh.eval()
    decoded = decode(fresh, K, DIM, [c for c, in codes], size, depth)
    return score_one_level(setup, task, fidelity or {"mse": MeanSquaredError()}, codes, decoded, size, depth)


def score_one_level(setup, task, fidelity, codes, decoded, size, depth):
    """Stage 3's evaluation of a one-level job: (metrics, unavailable)."""
    return vqbench.stages.evaluate(setup, task, fidelity, codes, [decoded], [(size, depth)])[:2]


EVALUATION_CASES = [
    Case("evaluation", WidensRateInEval, "evaluation: rate budget exceeded: 8.000 bits/token > log2(K) = 4.000 "
                                         "(depth 1 x codebook 256)"),
    Case("evaluation", DecodeDependsOnOrder, "decode(codes) is not a pure function of codes: the same codes decoded in "
                                             "another order or batch give other vectors (max difference 1)"),
    Case("evaluation", DecodeNaNForLastCode, "decode(codes) returns non-finite vectors for some codes"),
    Case("evaluation", DecodeWithoutTokenAxis, "decode(codes) of shape (16, 1) returned (16, 4), expected (16, 1, 4)"),
    Case("evaluation", ChangesSizeInEval, "evaluation: codebook_size/depth change with eval(): (16, 1) -> (8, 1)"),
    Case("evaluation", SizeDependsOnInstance, "decoding: a quantizer loaded from its trained state declares "
                                              "codebook_size/depth (8, 1), training declared (16, 1)"),
    Case("evaluation", FloatCodesInEval, "evaluation: codes must be an int64 tensor, got torch.float32"),
    Case("evaluation", CodesPastKInEval, "evaluation: codes outside [0, 16): min 16, max 16"),
]


def test_the_good_quantizer_trains_and_evaluates():
    metrics, unavailable = evaluate(*trained(GoodVQ), TASK)
    assert unavailable == {} and 0 < metrics["quantization_error"] < 1 and metrics["mse"] > 0


@pytest.mark.parametrize("case", EVALUATION_CASES, ids=str)
def test_evaluation_refuses_with_its_reason(case):
    with pytest.raises(JobFailure) as e:
        evaluate(*trained(case.quantizer), TASK)
    assert_reason(str(e.value), case.reason)


def test_a_pass_through_is_scored_from_a_fresh_decode():
    """z_q passed through in eval: the reconstruction comes from a copy that only loaded the trained
    state, so it scores what GoodVQ scores (decode caches across processes: tests/test_faults.py)."""
    assert evaluate(*trained(PassesZThroughInEval))[0] == evaluate(*trained(GoodVQ))[0]


def test_a_state_that_is_not_plain_tensors_is_refused():
    state = build(ExtraStateObject)(0).state_dict()
    with pytest.raises(JobFailure) as e:
        from_bytes(to_bytes(state), "the quantizer's state_dict")
    assert str(e.value).startswith("the quantizer's state_dict is not plain tensor data (")
    assert str(e.value).endswith("keep the quantizer's state in parameters and registered buffers")


def test_codes_that_do_not_fit_the_eval_batches_are_refused():
    setup, q = trained(GoodVQ)
    q.eval()
    codes = encode(setup, [q], TASK, [(16, 1)])
    decoded = decode(q, K, DIM, [c for c, in codes], 16, 1)
    with pytest.raises(JobFailure, match=r"^evaluation: 2 batches of codes for 3 eval batches$"):
        score_one_level(setup, TASK, {"mse": MeanSquaredError()}, codes[:2], decoded, 16, 1)
    with pytest.raises(JobFailure, match=r"^evaluation: 4 batches of codes for 3 eval batches$"):
        score_one_level(setup, TASK, {"mse": MeanSquaredError()}, codes + codes[:1], decoded, 16, 1)
    with pytest.raises(JobFailure, match=r"^evaluation: the codes sent back do not match the eval batches$"):
        score_one_level(setup, TASK, {"mse": MeanSquaredError()}, [[c.float()] for c, in codes], decoded, 16, 1)
    with pytest.raises(JobFailure, match=r"^evaluation: the codes or decoded vectors sent back are not one entry per "
                                         r"level$"):
        vqbench.stages.evaluate(setup, TASK, {"mse": MeanSquaredError()}, codes, [decoded, decoded], [(16, 1)])


class NaNMetric(MeanSquaredError):
    def compute(self):
        return float("nan")


class MissingWeights(MeanSquaredError):
    def compute(self):
        raise MetricUnavailable("weights not cached: run `vqbench data fetch`")


class ExactReconstruction(MeanSquaredError):
    def compute(self):
        return float("inf")  # as PSNR is when x_hat == x


def test_evaluation_refuses_a_non_finite_metric():
    setup, q = tiny_setup(), build(GoodVQ)(0)
    with pytest.raises(JobFailure) as e:
        evaluate(setup, q, TASK, {"mse": NaNMetric()})
    assert str(e.value) == "non-finite metrics at evaluation: mse"


def test_evaluation_records_why_a_metric_has_no_value(monkeypatch):
    monkeypatch.setitem(METRICS, "exact", METRICS["utilization"])  # any higher-is-better metric
    task = SimpleNamespace(**{**vars(TASK), "metrics": ("mse", "exact")})
    setup, q = tiny_setup(), build(GoodVQ)(0)
    metrics, unavailable = evaluate(setup, q, task, {"mse": MissingWeights(), "exact": ExactReconstruction()})
    assert metrics["mse"] is None and metrics["exact"] is None
    assert unavailable == {"mse": "weights not cached: run `vqbench data fetch`",
                           "exact": "infinite: the reconstruction is exact"}


class NaNLossAtStep1(GoodVQ):
    def schedule(self, step, total_steps):
        if step == 1:
            with torch.no_grad():
                self.embed.fill_(float("nan"))


def test_training_refuses_a_non_finite_loss():
    with pytest.raises(JobFailure) as e:
        train(tiny_setup(), [build(NaNLossAtStep1)(0)], TASK)
    assert_reason(str(e.value), "non-finite loss at training step 1: reconstruction nan, quantizer loss nan")


def test_training_checks_every_step_output():
    with pytest.raises(JobFailure) as e:
        train(tiny_setup(), [build(FloatCodes)(0)], TASK)
    assert str(e.value) == "training step 0: codes must be an int64 tensor, got torch.float32"


def reasons_asserted() -> list[str]:
    return [case.reason for case in CONTRACT_CASES + EVALUATION_CASES] + [
        "non-finite metrics at evaluation: mse", "non-finite loss at training step 1: reconstruction nan",
        "the quantizer's state_dict is not plain tensor data (", "evaluation: 2 batches of codes for 3 eval batches",
        "evaluation: the codes sent back do not match the eval batches",
        "evaluation: the codes or decoded vectors sent back are not one entry per level"]


def test_every_refusal_in_train_py_has_a_failing_fixture():
    """Each `raise JobFailure(...)` in the modules that enforce the contract (train.py, enforce.py,
    stages.py), by the text it starts with (after any `where` prefix), appears in some reason
    asserted above: a new refusal needs its own fixture."""
    trees = [ast.parse(inspect.getsource(m)) for m in (vqbench.train, vqbench.enforce, vqbench.stages)]
    raised = [node.exc for tree in trees for node in ast.walk(tree) if isinstance(node, ast.Raise)
              and isinstance(node.exc, ast.Call) and getattr(node.exc.func, "id", None) == "JobFailure"]
    assert len(raised) >= 10
    fragments = []
    for call in raised:
        message = call.args[0]
        parts = message.values if isinstance(message, ast.JoinedStr) else [message]
        fragments.append(next(p.value for p in parts if isinstance(p, ast.Constant)))
    reasons = reasons_asserted()
    untested = [f for f in fragments if not any(f in r for r in reasons)]
    assert untested == []
