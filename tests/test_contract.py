"""Contract conformance, parametrized over every registered submission (a new one is tested automatically).

The checks are vqbench.checks', the same that `vqbench validate` reports: one home for what
the contract means.
"""
from __future__ import annotations

import pytest

from vqbench.submissions import get_submission, list_submissions
from vqbench.checks import (CONTRACT_CHECKS, EDGE_INPUTS, builder, check_edge_input, check_edge_inputs, check_forward,
                            check_rate_both_modes)


def available(names):
    out = []
    for name in names:
        missing = get_submission(name).missing_requirements()
        mark = pytest.mark.skip(reason=f"{name} needs {', '.join(missing)} (optional extra)") if missing else ()
        out.append(pytest.param(name, marks=mark))
    return out


SUBMISSIONS = available(list_submissions())
DIM = 8


@pytest.mark.parametrize("name", SUBMISSIONS)
@pytest.mark.parametrize("check", [check for _, check in CONTRACT_CHECKS if check is not check_edge_inputs],
                         ids=lambda check: check.__name__)
def test_contract(name, check):
    check(builder(get_submission(name), DIM, 256), DIM, 256)


@pytest.mark.parametrize("name", SUBMISSIONS)
@pytest.mark.parametrize("check", [check_rate_both_modes, check_forward])
def test_rate_and_forward_at_a_larger_k(name, check):
    check(builder(get_submission(name), DIM, 1024), DIM, 1024)


@pytest.mark.parametrize("name", SUBMISSIONS)
@pytest.mark.parametrize("case", list(EDGE_INPUTS))
def test_edge_inputs_stay_finite(name, case):
    check_edge_input(builder(get_submission(name), DIM, 256), DIM, 256, case)


@pytest.mark.parametrize("name", list_submissions())
def test_source_scan_accepts_every_registered_submission(name):
    from vqbench.validate import scan_source
    assert scan_source(get_submission(name)) == []
