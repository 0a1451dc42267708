"""The supervisor trusts nothing a job's process sends: a malformed, oversized or forged message
becomes a failed result with a clear reason (vqbench/sandbox.py run_in_child, vqbench/job.py _problem);
no message from a process that ran submission code can carry a score.

The fixture `lies_to_supervisor` writes the message itself into the pipe to its supervisor, from
inside its job's process, as hostile submission code could."""
from __future__ import annotations

from pathlib import Path

import pytest

from vqbench.results import read_result, result_path
from vqbench.runner import plan, run
from vqbench.submissions import get_submission
from vqbench.tasks import get_task

BAD_MESSAGE = "bad message from the job's process"
BAD_RESULT = "bad result from the job's process (train and encode): "


def run_lying(project: Path, lie: str) -> dict:
    yaml = project / "submissions" / "lies_to_supervisor" / "submission.yaml"
    yaml.write_text(yaml.read_text().replace("lie: garbage", f"lie: {lie}"))
    results = project / "results"
    jobs, _ = plan([get_submission("lies_to_supervisor")], [get_task("synthetic/tiny")], [0], results, False)
    summary = run(jobs, project, results, "serial", timeout_s=60, show_progress=False)
    written = read_result(result_path(results, "lies_to_supervisor", "synthetic/tiny", 0))
    assert written == (summary.done + summary.failed)[0]
    return written


@pytest.mark.parametrize("lie, reason, kind", [
    ("garbage", f"{BAD_MESSAGE}: Expecting value: line 1 column 1 (char 0)", "ChildError"),
    ("oversized", f"{BAD_MESSAGE}: bad message length", "ChildError"),
    ("not_a_list", BAD_MESSAGE, "ChildError"),
    ("payload_twice", f"{BAD_MESSAGE}: payload 'snapshot' sent twice or malformed", "ChildError"),
    ("not_a_result", f"{BAD_RESULT}not a training report", "BadResult"),
    ("failed_without_reason", f"{BAD_RESULT}a failure without a reason", "BadResult"),
    ("no_payloads", f"{BAD_RESULT}it sent no snapshot, codes", "BadResult"),
    # a whole result, right in every field, with made-up numbers: scores never come from this process
    ("forged_score", f"{BAD_RESULT}not a training report", "BadResult"),
])
def test_a_bad_message_becomes_a_failed_result_with_the_reason(project, lie, reason, kind):
    result = run_lying(project, lie)
    assert result["status"] == "failed" and result["metrics"] == {}
    assert (result["error"]["reason"], result["error"]["type"]) == (reason, kind)
    assert result["provenance"]["wall_time_s"] < 30  # acted on at once, not after the sender's sleep or the limit
