"""Test tiers by folder: unit (no cluster), integration (real API server), e2e (plus data plane),
kind (the e2e scenarios and more on a real kind cluster)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testenv_harness.provision.clusters import Cluster, LocalProvider
from tests.progress import progress

HERE = Path(__file__).parent
pytest_plugins = ["pytester"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kube-testenv tests")
    group.addoption(
        "--keep-cluster",
        action="store_true",
        help="leave the test clusters running after the session, and reuse ones an earlier session left",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(item.fspath).relative_to(HERE).parts[0]
        if tier in ("integration", "e2e", "kind"):
            item.add_marker(getattr(pytest.mark, tier))


#: Under `-n 2 --dist loadgroup` (`make test`) each cluster's tests run in one xdist worker, in
#: their usual order: the local cluster's (e2e, then integration) in one, the kind cluster's in
#: the other, and the unit tests wherever there is room. The local tiers share one worker because
#: they share the session's cluster; a second local control plane would only compete for the cores.
CLUSTER_OF_TIER = {"integration": "local-cluster", "e2e": "local-cluster", "kind": "kind-cluster"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """The groups above, by folder. xdist's own `loadgroup` cannot group here: xdist 3.8.0 writes
    an `xdist_group` mark's name into `item._nodeid`, which pytest 9's `nodeid` no longer reads, so
    every test would be a group of its own."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    class ByCluster(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            parts = nodeid.split("/", 2)
            tier = parts[1] if len(parts) == 3 and parts[0] == "tests" else ""
            return CLUSTER_OF_TIER.get(tier, nodeid)

    return ByCluster(config, log)


@pytest.fixture(autouse=True)
def _no_xdist_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `make test`'s xdist the tests' own pytest, testenv and suite runs must not take this
    worker's variables (PYTEST_XDIST_WORKER=gw1, ...) for theirs: they run as without xdist."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)


#: Override to run two test sessions side by side without sharing (and deleting) one cluster.
CLUSTER_NAME = os.environ.get("TESTENV_IT_CLUSTER", "testenv-it")


@pytest.fixture(scope="session")
def local_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    report = progress(request.config, "cluster")
    provider = LocalProvider(CLUSTER_NAME, report=report)
    keep = request.config.getoption("--keep-cluster")
    if not keep and provider.exists():
        # Left by a session that was killed before its teardown (or kept with --keep-cluster):
        # its objects, such as environments stuck in Terminating namespaces, are not this run's.
        report(f"deleting {CLUSTER_NAME!r}, left by an earlier session (--keep-cluster reuses it)")
        provider.down()
    cluster = provider.up()
    yield cluster
    if not keep:
        provider.down()
