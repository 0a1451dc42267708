"""vqbench installed from a wheel, outside the checkout, still validates a submission: everything
it needs at run time (the smoke task, the family folders, the site's templates) is package data."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).parent.parent


def test_wheel_installed_outside_the_checkout_validates(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("vqbench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "vqbench/smoke_tasks/synthetic/smoke.yaml" in names
    assert {"vqbench/families/synthetic/README.md", "vqbench/families/image/README.md"} <= set(names)
    assert {f"vqbench/leaderboard/templates/{t}.html" for t in ("base", "index", "task", "submission")} <= set(names)
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    project = tmp_path / "project"  # a user's project: no vqbench source in it
    (project / "tasks").mkdir(parents=True)
    shutil.copytree(REPO / "tests" / "fixtures" / "submissions" / "minimal", project / "submissions" / "minimal")
    env = {**os.environ, "PYTHONPATH": str(site), "VQBENCH_ROOT": str(project),
           "VQBENCH_HOME": str(tmp_path / "home"), "RAY_AUTH_MODE": "disabled"}
    code = "import sys, vqbench, vqbench.cli; print(vqbench.__file__, file=sys.stderr); sys.exit(vqbench.cli.main())"
    proc = subprocess.run([sys.executable, "-c", code, "validate", "minimal"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert str(site / "vqbench" / "__init__.py") in proc.stderr  # the wheel's copy ran, not the checkout
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "PASS  smoke run: synthetic/smoke" in proc.stdout
