"""Test tiers by folder: unit (no cluster), integration (real API server), e2e (plus data plane),
kind (the e2e scenarios and more on a real kind cluster)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testenv_harness.provision.clusters import Cluster, LocalProvider

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


#: Override to run two test sessions side by side without sharing (and deleting) one cluster.
CLUSTER_NAME = os.environ.get("TESTENV_IT_CLUSTER", "testenv-it")


@pytest.fixture(scope="session")
def local_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")

    def report(line: str) -> None:
        if reporter is not None:
            reporter.write_line(f"[cluster] {line}")

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
