"""The `existing` cluster: whatever the current kubeconfig points at (a shared CI cluster)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence, Set
from pathlib import Path

from testenv_harness.clusters.base import MOTO_RESET, Cluster
from testenv_harness.errors import ClusterError


class ExistingProvider:
    """Uses a cluster someone else runs; never creates or deletes it."""

    name = "existing"
    #: Someone else's cluster: its operator is installed there (the Helm chart).
    default_operator = "cluster"
    simulated_pods = False

    @staticmethod
    def reset_endpoint(service_type: str) -> str | None:
        """Real LocalStack has no such reset: it is restarted."""
        return MOTO_RESET if service_type == "moto" else None

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        first = (kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")).split(
            os.pathsep
        )[0]
        self.kubeconfig = Path(first).expanduser()
        self.context = context

    def exists(self) -> bool:
        return self.kubeconfig.is_file()

    def up(self) -> Cluster:
        if not self.exists():
            raise ClusterError(
                f"no kubeconfig at {self.kubeconfig}: set KUBECONFIG, or use --testenv-cluster=local for a "
                "throwaway local cluster"
            )
        return Cluster(self.name, self.context or "current-context", self.kubeconfig)

    def down(self) -> None:
        """An existing cluster is not ours to delete."""

    def service_images(self, types: Set[str]) -> Mapping[str, str]:
        """Its operator's defaults (the chart's serviceImages) apply."""
        return {}

    def load_images(self, images: Sequence[str]) -> None:
        """Its nodes pull from registries."""
