"""`--ray-address`: a two-node Ray cluster on loopback (head + a second `ray start --address`) runs the jobs."""
from __future__ import annotations

import os
import random
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


def free_ports(n: int, avoid: set[int]) -> list[int]:
    """n distinct ports free now (bound all at once, so the kernel cannot hand one out twice), none in `avoid`."""
    while True:
        socks = [socket.socket() for _ in range(n)]
        try:
            for s in socks:
                s.bind(("127.0.0.1", 0))
            ports = [s.getsockname()[1] for s in socks]
        finally:
            for s in socks:
                s.close()
        if avoid.isdisjoint(ports):
            return ports


def free_port_range(size: int, avoid: set[int], rng=random.Random()) -> tuple[int, int]:
    """`size` consecutive free ports in 20000-29999: below the kernel's ephemeral range (32768 up, where
    free_ports() finds the others) and above Ray's default worker ports (10002-19999, which another
    Ray on this machine uses)."""
    for _ in range(200):
        low = rng.randrange(20000, 30000 - size)
        ports = range(low, low + size)
        if avoid.isdisjoint(ports) and all(bindable(p) for p in ports):
            return low, low + size - 1
    raise RuntimeError(f"no {size} consecutive free ports between 20000 and 30000")


def bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def node_ports(head: bool, avoid: set[int]) -> dict[str, int]:
    """`ray start` option -> port, for every port it would otherwise take at a fixed default (GCS 6379,
    dashboard agent 52365, ...) or from a shared range (workers): two Rays on one machine must not meet."""
    names = ["node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "runtime-env-agent-port", "metrics-export-port"]
    if head:
        names += ["port", "dashboard-port"]  # (no Ray client server: it needs ray[client], not installed)
    ports = dict(zip(names, free_ports(len(names), avoid)))
    low, high = free_port_range(16, avoid | set(ports.values()))
    avoid |= set(ports.values()) | set(range(low, high + 1))
    return {**ports, "min-worker-port": low, "max-worker-port": high}


def options(ports: dict[str, int]) -> list[str]:
    return [f"--{name}={port}" for name, port in ports.items()]


def start_node(args, env):
    # --block keeps `ray start` in the foreground; killing its process group stops this node only
    # (`ray stop` would stop every Ray process on the machine, other runs included).
    return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", "--num-cpus=1", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_for_nodes(address, n, env, nodes, timeout=90):
    probe = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
             "print(sum(1 for x in ray.nodes() if x['Alive']))")
    deadline = time.time() + timeout
    while time.time() < deadline:
        # a node that failed to start (a bad option, a port taken) would leave ray.init waiting for a GCS forever
        if dead := [node.args for node in nodes if node.poll() is not None]:
            raise RuntimeError(f"`ray start` exited: {dead}")
        try:
            out = subprocess.run([sys.executable, "-c", probe, address], env=env, capture_output=True, text=True,
                                 timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            break
        if out.returncode == 0 and out.stdout.strip() == str(n):
            return
        time.sleep(1)
    raise TimeoutError(f"Ray cluster at {address} did not reach {n} nodes")


@pytest.mark.skipif(not os.path.exists(RAY), reason="the ray CLI is not installed")
def test_two_node_loopback_cluster_runs_jobs_via_ray_address(project):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    taken: set[int] = set()
    head = node_ports(head=True, avoid=taken)
    address = f"127.0.0.1:{head['port']}"
    nodes = [start_node(["--head", *options(head), "--node-ip-address=127.0.0.1", "--include-dashboard=false"], env)]
    try:
        nodes.append(start_node([f"--address={address}", *options(node_ports(head=False, avoid=taken)),
                                 "--node-ip-address=127.0.0.1"], env))
        wait_for_nodes(address, 2, env, nodes)
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
                node.wait(timeout=5)  # the head drains for ~30 s after SIGTERM: no need to watch that
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
