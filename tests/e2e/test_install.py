"""A team's own project, outside this repository: a fresh virtual environment, the package
installed by the README's words alone (a regular install from the checkout, no editable mode,
none of this repository's files on the path), and a small suite run at -n 2 on the local cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from testenv_harness.provision.clusters import Cluster
from tests.suites import CACHE

CHECKOUT = Path(__file__).resolve().parents[2]
SUITE = """
import os

import redis


def test_my_redis_is_mine(testenv):
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.set("owner", os.environ["TESTENV_WORKER"])
    assert client.get("owner").decode() == os.environ["TESTENV_WORKER"]


def test_the_cli_is_on_path_and_says_its_version():
    import subprocess
    out = subprocess.run(["testenv", "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("testenv ")
"""


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_a_new_project_installs_it_from_the_readme_and_runs_its_suite(
    local_cluster: Cluster, tmp_path: Path
) -> None:
    readme = (CHECKOUT / "README.md").read_text()
    assert "pip install /path/to/kube-testenv" in readme, (
        "the README's Install section changed: follow it here"
    )
    project = tmp_path / "shop"
    project.mkdir()
    (project / "test_cart.py").write_text(textwrap.dedent(SUITE))
    (project / "pytest.ini").write_text(
        "[pytest]\ntestenv = true\ntestenv_services = redis\naddopts = -p no:cacheprovider\n"
    )
    venv = project / ".venv"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONPATH", "KUBECONFIG") and not key.startswith("TESTENV_")
    }
    env["KUBE_TESTENV_CACHE"] = CACHE  # the Go tools built once for this machine
    _run([sys.executable, "-m", "venv", str(venv)], project, env, 120)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    # The README's words: a regular install from the checkout (and the suite's own client).
    _run([str(venv / "bin" / "pip"), "install", "--quiet", str(CHECKOUT), "redis"], project, env, 900)
    where = _run(
        [str(venv / "bin" / "python"), "-c", "import testenv_harness; print(testenv_harness.__file__)"],
        project,
        env,
        60,
    ).stdout
    assert str(venv) in where, f"the project's own install, not the checkout: {where}"
    result = _run(
        [
            str(venv / "bin" / "pytest"),
            "-n",
            "2",
            "--testenv-cluster",
            "local",
            "--testenv-cluster-name",
            local_cluster.name,
            "--testenv-namespace",
            f"shop-{uuid.uuid4().hex[:6]}",
        ],
        project,
        env,
        600,
    )
    assert "2 passed" in result.stdout, result.stdout[-2000:]
    assert not project.is_relative_to(CHECKOUT)
