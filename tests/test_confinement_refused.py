"""Where the kernel refuses namespaces, jobs still run, under the limits and the guard, and say so.

Not simulated with $VQBENCH_NO_NAMESPACES: the kernel refuses for real. A user namespace whose
`user.max_user_namespaces` is 1 holds exactly one nested namespace, so a process inside that one
(the supervisor) gets ENOSPC from unshare(CLONE_NEWUSER), as on a machine that forbids them. Two
supervisors: an unprivileged user (the usual case) and root (whose own mount namespace still
works, so the file systems stay read-only: "partial")."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from vqbench.paths import project_root

# In the refusing namespace: what confinement a job gets, and what its submission code can do.
PROBE = textwrap.dedent("""
    import json, os, tempfile
    from vqbench.paths import project_root
    from vqbench.sandbox import confinement_in_force, confinement_warning, run_in_child

    def try_writes(emit):
        out = {}
        for name, path in (("project", project_root() / ".refused-probe"), ("scratch", os.path.join(tempfile.gettempdir(), "x"))):
            try:
                with open(path, "w") as f:
                    f.write("x")
                os.remove(path)
                out[name] = "written"
            except OSError as e:
                out[name] = e.strerror
        return out

    if __name__ == "__main__":  # the job's target lives here: children import this file
        state = confinement_in_force()
        outcome = run_in_child(try_writes, (), 60.0, confined=True)
        print(json.dumps({"uid": os.geteuid(), "state": state, "warning": confinement_warning(state),
                          "recorded": outcome.confinement, "value": outcome.value, "failure": outcome.failure}))
""")


def refusing(uid: int) -> list[str]:
    """A command prefix: a user namespace that allows one more, then the supervisor inside it as uid."""
    inner = ["unshare", "--user", f"--map-user={uid}", f"--map-group={uid}"]
    return ["unshare", "--user", "--map-root-user", "sh", "-c",
            'echo 1 > /proc/sys/user/max_user_namespaces && exec "$@"', "sh", *inner]


def can_nest() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run([*refusing(1000), "true"], capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not can_nest(), reason="this machine cannot create the nested user namespaces "
                                                       "the test needs (util-linux unshare, user namespaces)")


def run_probe(uid: int, tmp_path) -> dict:
    (tmp_path / "probe.py").write_text(PROBE)
    done = subprocess.run([*refusing(uid), sys.executable, str(tmp_path / "probe.py")], capture_output=True,
                          text=True, timeout=120, cwd=project_root())
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_unprivileged_supervisor_runs_jobs_unconfined_and_says_why(tmp_path):
    report = run_probe(1000, tmp_path)
    assert report["uid"] == 1000
    assert report["state"] == report["recorded"] == (
        "none: namespaces refused (unshare: No space left on device); time, memory and output limits only")
    assert "not fully confined" in report["warning"]
    # the job ran; nothing stops its writes here but the guard (tests/test_faults.py: undone)
    assert report["failure"] is None and report["value"]["project"] == "written"
    assert not (project_root() / ".refused-probe").exists()


def test_root_supervisor_keeps_read_only_file_systems_when_user_namespaces_are_refused(tmp_path):
    report = run_probe(0, tmp_path)
    assert report["uid"] == 0
    assert report["state"] == report["recorded"] == (
        "partial: read-only file systems (root: not locked), private scratch; user, PID and network namespaces "
        "refused (unshare: No space left on device); time, memory and output limits")
    assert report["warning"]
    assert report["failure"] is None
    assert report["value"] == {"project": "Read-only file system", "scratch": "written"}
