"""Test tiers by folder: unit (no cluster), integration (real API server), e2e (plus data plane),
kind (the e2e scenarios and more on a real kind cluster)."""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator
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
        if not item.path.is_relative_to(HERE):
            continue
        tier = item.path.relative_to(HERE).parts[0]
        if tier in ("integration", "e2e", "kind"):
            item.add_marker(getattr(pytest.mark, tier))


#: Under `-n 2 --dist loadgroup` (`make test`) the kind tier runs whole in one xdist worker (one
#: kind cluster, deleted after its last test), and the local tiers' test files are handed out one
#: at a time to whichever worker runs short of work, so that the two workers end together. The
#: longest go first (`FIRST`, from CI's `--durations`), the other files after them, largest first,
#: and the unit tests fill in at the end. Each worker makes a local cluster of its own the first
#: time one of its tests needs it (`local_cluster`).
KIND_GROUP = "kind-cluster"
FIRST = (
    KIND_GROUP,
    "tests/e2e/test_cli.py",
    "tests/e2e/test_harness.py",
    "tests/integration/test_operator_restarts.py",
    "tests/e2e/test_reuse.py",
    "tests/integration/test_chart.py",
    "tests/integration/test_operator.py",
    "tests/integration/test_leader_partition.py",
)


def group_of(nodeid: str) -> str:
    """A test's group under `make test`: the kind tier; a local tier's file; or the test alone."""
    parts = nodeid.split("/", 2)
    tier = parts[1] if len(parts) == 3 and parts[0] == "tests" else ""
    if tier == "kind":
        return KIND_GROUP
    if tier in ("e2e", "integration"):
        return nodeid.split("::", 1)[0]
    return nodeid


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """The groups above. xdist's own `loadgroup` cannot group here: xdist 3.8.0 writes an
    `xdist_group` mark's name into `item._nodeid`, which pytest 9's `nodeid` no longer reads, so
    every test would be a group of its own."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    class ByCluster(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            # xdist hands out the queue's first group (largest first); put the next of FIRST there.
            for group in FIRST:
                if group in self.workqueue:
                    self.workqueue.move_to_end(group, last=False)
                    break
            super()._assign_work_unit(node)

    return ByCluster(config, log)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    """Modules first imported during a `pytester` test stay imported after it.

    `pytester` drops them at its test's end (for inline runs, whose test modules must not leak;
    ours run in subprocesses). A dropped module is imported anew by the next test that needs it,
    and then two copies of its classes exist: the Kubernetes client, which loads its API and
    model modules on first use, refused its own model objects ("1 validation error for
    V1Namespace", pydantic checking against the new class) in every later test of that xdist
    worker. Which test is the first to load a module depends on how xdist hands tests out (seen
    with three workers). Modules from the test's own folder are left dropped.
    """
    pytester = getattr(item, "funcargs", {}).get("pytester")
    loaded = dict(sys.modules) if isinstance(pytester, pytest.Pytester) else {}
    try:
        return (yield)
    finally:
        for name, module in loaded.items():
            origin = getattr(module, "__file__", None) or ""
            if name not in sys.modules and not origin.startswith(str(pytester.path)):
                sys.modules[name] = module


@pytest.fixture(autouse=True)
def _no_xdist_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `make test`'s xdist the tests' own pytest, testenv and suite runs must not take this
    worker's variables (PYTEST_XDIST_WORKER=gw1, ...) for theirs: they run as without xdist."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)


#: Override to run two test sessions side by side without sharing (and deleting) one cluster.
CLUSTER_NAME = os.environ.get("TESTENV_IT_CLUSTER", "testenv-it")


def cluster_name(config: pytest.Config) -> str:
    """CLUSTER_NAME, and under xdist the worker's id after it: each worker's local tiers get a
    cluster of their own."""
    worker = getattr(config, "workerinput", {}).get("workerid")
    return f"{CLUSTER_NAME}-{worker}" if worker else CLUSTER_NAME


@pytest.fixture(scope="session")
def local_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    report = progress(request.config, "cluster")
    name = cluster_name(request.config)
    provider = LocalProvider(name, report=report)
    keep = request.config.getoption("--keep-cluster")
    if not keep and provider.exists():
        # Left by a session that was killed before its teardown (or kept with --keep-cluster):
        # its objects, such as environments stuck in Terminating namespaces, are not this run's.
        report(f"deleting {name!r}, left by an earlier session (--keep-cluster reuses it)")
        provider.down()
    cluster = provider.up()
    yield cluster
    if not keep:
        provider.down()
