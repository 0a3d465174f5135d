"""Runs pytest itself (pytester, in a subprocess) with the kube-testenv plugin on the local cluster.

tests/kind runs the same scenarios with `e2e_cluster` overridden by a kind cluster.
"""

from __future__ import annotations

import pytest

from testenv_harness.provision.clusters import Cluster
from tests.suites import Run, example_suite, run_suite

__all__ = ["Run", "e2e_cluster", "example_suite", "run_suite"]


@pytest.fixture
def e2e_cluster(local_cluster: Cluster) -> Cluster:
    """The cluster the scenarios run on."""
    return local_cluster
