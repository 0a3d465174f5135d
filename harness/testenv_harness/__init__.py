"""kube-testenv's harness: a cluster per run, and each test worker's own services in it."""

from __future__ import annotations

from testenv_harness.ground.errors import ClusterError, NotReadyError, TestEnvError, ToolchainError
from testenv_harness.provision.clusters import Cluster, LocalProvider
from testenv_harness.worker.testenv import TestEnv

__all__ = [
    "Cluster",
    "ClusterError",
    "LocalProvider",
    "NotReadyError",
    "TestEnv",
    "TestEnvError",
    "ToolchainError",
]
