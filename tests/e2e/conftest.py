"""Runs pytest itself (pytester, in a subprocess) with the kube-testenv plugin on the local cluster.

tests/kind runs the same scenarios with `e2e_cluster` overridden by a kind cluster.
"""

from __future__ import annotations

import uuid

import pytest

from testenv_harness.provision.clusters import Cluster
from tests.suites import Run, example_suite, run_suite

__all__ = ["Run", "e2e_cluster", "example_suite", "run_suite"]


@pytest.fixture
def e2e_cluster(local_cluster: Cluster) -> Cluster:
    """The cluster the scenarios run on."""
    return local_cluster


@pytest.fixture
def where(local_cluster: Cluster) -> list[str]:
    """The run options that put a run on the session's cluster, in a namespace of its own."""
    return [
        "--cluster=local",
        f"--cluster-name={local_cluster.name}",
        f"--namespace=cli-{uuid.uuid4().hex[:6]}",
        "--timeout=180",
    ]
