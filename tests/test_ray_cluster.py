"""`--ray-address`: a two-node Ray cluster on loopback (head + a second `ray start --address`) runs the jobs."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vqbench.results import iter_results

RAY = shutil.which("ray") or str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args, env):
    # --block keeps `ray start` in the foreground; killing its process group stops this node only
    # (`ray stop` would stop every Ray process on the machine, other runs included).
    return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", "--num-cpus=1", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_for_nodes(address, n, env, timeout=90):
    probe = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
             "print(sum(1 for x in ray.nodes() if x['Alive']))")
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run([sys.executable, "-c", probe, address], env=env, capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip() == str(n):
            return
        time.sleep(1)
    raise TimeoutError(f"Ray cluster at {address} did not reach {n} nodes")


@pytest.mark.skipif(not os.path.exists(RAY), reason="the ray CLI is not installed")
def test_two_node_loopback_cluster_runs_jobs_via_ray_address(project):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = [start_node(["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false"], env)]
    try:
        nodes.append(start_node([f"--address={address}", "--node-ip-address=127.0.0.1"], env))
        wait_for_nodes(address, 2, env)
        results = project / "results"
        cmd = [sys.executable, "-m", "vqbench.cli", "run", "--submission", "minimal", "--tasks", "synthetic/tiny",
               "--seeds", "0,1,2,3", "--ray-address", address, "--results-dir", str(results), "--quiet"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        found = [r for _, r in iter_results(results)]
        assert len(found) == 4 and all(r["status"] == "ok" for r in found)
        assert {r["provenance"]["executor"] for r in found} == {"ray"}
        # one CPU per node and four jobs: both nodes must have taken work
        assert len({r["provenance"]["ray_node"] for r in found}) == 2
    finally:
        for node in reversed(nodes):
            try:
                os.killpg(node.pid, signal.SIGTERM)
                node.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(node.pid, signal.SIGKILL)
