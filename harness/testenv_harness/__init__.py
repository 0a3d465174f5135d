"""kube-testenv's harness: a cluster per run, and each test worker's own services in it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from testenv_harness.ground.errors import ClusterError, NotReadyError, TestEnvError, ToolchainError
from testenv_harness.worker.testenv import TestEnv

if TYPE_CHECKING:
    from testenv_harness.provision.clusters import Cluster, LocalProvider

__all__ = [
    "Cluster",
    "ClusterError",
    "LocalProvider",
    "NotReadyError",
    "TestEnv",
    "TestEnvError",
    "ToolchainError",
]


def __getattr__(name: str) -> Any:
    """`Cluster` and `LocalProvider` on first use: the cluster providers (and the image builds they
    bring) are not loaded by every pytest process that loads the plugin, an xdist worker's included."""
    if name in ("Cluster", "LocalProvider"):
        from testenv_harness.provision import clusters

        return getattr(clusters, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
