"""The scenario fixtures both cluster tiers share: pytester runs of the plugin as a user runs it.

A tier provides `e2e_cluster` (tests/e2e: the local cluster; tests/kind: a kind cluster) and
imports these fixtures into its conftest.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from testenv_harness.ground import files
from testenv_harness.provision.clusters import Cluster

#: Read before pytester points HOME at a temporary folder: the inner runs need the built tools.
CACHE = str(files.cache_root())
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
_SCRIPT = Path(sys.executable).with_name("testenv")
#: The `testenv` command of this installation (its script, or the module where there is none).
TESTENV = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "testenv_harness"]
Run = Callable[..., pytest.RunResult]


@pytest.fixture
def run_suite(pytester: pytest.Pytester, e2e_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Run:
    """Run pytest in `pytester.path` with the plugin pointed at the session's cluster."""
    monkeypatch.setenv("KUBE_TESTENV_CACHE", CACHE)

    def run(*args: str, timeout: float = 600) -> pytest.RunResult:
        namespace = f"e2e-{uuid.uuid4().hex[:6]}"
        return pytester.runpytest_subprocess(
            "-p",
            "no:cacheprovider",
            f"--testenv-cluster={e2e_cluster.provider}",
            f"--testenv-cluster-name={e2e_cluster.name}",
            f"--testenv-namespace={namespace}",
            "--testenv-timeout=180",
            *args,
            timeout=timeout,
        )

    return run


@pytest.fixture
def example_suite(pytester: pytest.Pytester) -> Path:
    """The shipped example suite and manifest, copied into the pytester folder."""
    shutil.copy(EXAMPLES / "testenvironment.yaml", pytester.path / "testenvironment.yaml")
    for test in (EXAMPLES / "suite").glob("test_*.py"):
        shutil.copy(test, pytester.path / test.name)
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_manifest = testenvironment.yaml\n")
    return pytester.path
