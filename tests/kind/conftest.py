"""The kind tier: one real kind cluster for the tier (real kubelet, containerd, images and pods),
deleted once its last test is done (package scope), so that an xdist worker that goes on to a
local tier does not keep an idle kind node running beside it.

Where kind cannot start (no Docker engine, images not built) the whole tier is skipped with the
reason, unless TESTENV_REQUIRE_KIND=1 (CI sets it), which turns that into an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from testenv_harness.provision import imagebuild
from testenv_harness.provision.clusters import Cluster
from testenv_harness.provision.clusters.kind import KindProvider, why_not_kind
from tests.progress import progress
from tests.suites import Run, example_suite, run_suite

__all__ = ["Run", "e2e_cluster", "example_suite", "kind_cluster", "kind_provider", "run_suite"]

KIND_CLUSTER_NAME = os.environ.get("TESTENV_KIND_IT_CLUSTER", "testenv-kind-it")


def _unavailable() -> str:
    reason = why_not_kind()
    if not reason:
        missing = imagebuild.missing(list(imagebuild.DEFAULT_SET))
        if missing:
            reason = f"images not built: {', '.join(missing)} (run `make kind-images`)"
    return reason


@pytest.fixture(scope="package")
def kind_provider(request: pytest.FixtureRequest) -> KindProvider:
    reason = _unavailable()
    if reason:
        if os.environ.get("TESTENV_REQUIRE_KIND") == "1":
            pytest.fail(f"the kind tier must run here (TESTENV_REQUIRE_KIND=1), but {reason}")
        pytest.skip(f"kind tier not run: {reason}")
    return KindProvider(KIND_CLUSTER_NAME, report=progress(request.config, "kind"))


@pytest.fixture(scope="package")
def kind_cluster(request: pytest.FixtureRequest, kind_provider: KindProvider) -> Iterator[Cluster]:
    keep = request.config.getoption("--keep-cluster")
    if not keep and kind_provider.exists():
        kind_provider.report(f"deleting {KIND_CLUSTER_NAME!r}, left by an earlier session")
        kind_provider.down()
    cluster = kind_provider.up()
    yield cluster
    if not keep:
        kind_provider.down()


@pytest.fixture
def e2e_cluster(kind_cluster: Cluster) -> Cluster:
    """The shared scenarios (tests/e2e) run on the kind cluster here."""
    return kind_cluster
