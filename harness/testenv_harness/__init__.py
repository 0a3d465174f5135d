"""kube-testenv's harness: a cluster per run, and each test worker's own services in it."""

from __future__ import annotations

from testenv_harness.clusters import Cluster, LocalProvider
from testenv_harness.errors import ClusterError, NotReadyError, TestEnvError, ToolchainError
from testenv_harness.testenv import TestEnv

__all__ = [
    "Cluster",
    "ClusterError",
    "LocalProvider",
    "NotReadyError",
    "TestEnv",
    "TestEnvError",
    "ToolchainError",
]
