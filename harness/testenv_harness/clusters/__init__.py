"""Cluster providers: where a test run gets its Kubernetes API server from."""

from __future__ import annotations

from testenv_harness.clusters.base import Cluster, Provider
from testenv_harness.clusters.local import LocalProvider

__all__ = ["Cluster", "LocalProvider", "Provider"]
