"""The `existing` cluster: one someone else runs (a shared CI cluster), reached through a
kubeconfig, or from a pod inside it with the pod's own ServiceAccount token."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence, Set
from pathlib import Path

from testenv_harness.ground import kube
from testenv_harness.ground.errors import ClusterError
from testenv_harness.provision.clusters.base import Cluster


def _default_kubeconfig() -> Path:
    return Path.home() / ".kube" / "config"


class ExistingProvider:
    """Uses a cluster someone else runs; never creates or deletes it."""

    name = "existing"
    #: Someone else's cluster: its operator is installed there (the Helm chart).
    default_operator = "cluster"
    simulated_pods = False

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        """`kubeconfig` (else $KUBECONFIG's first file, else ~/.kube/config); inside a pod with none
        of those, the pod's ServiceAccount token."""
        given = kubeconfig or os.environ.get("KUBECONFIG")
        self.explicit = bool(given)
        first = (given or str(_default_kubeconfig())).split(os.pathsep)[0]
        self.kubeconfig = Path(first).expanduser()
        self.context = context

    @property
    def in_cluster(self) -> bool:
        """No kubeconfig was named or found, and this process runs in a pod: use its token."""
        return not self.explicit and not self.kubeconfig.is_file() and kube.in_cluster()

    def exists(self) -> bool:
        return self.kubeconfig.is_file() or self.in_cluster

    def default_namespace(self) -> str:
        """Where kubectl would work: the context's namespace, or the pod's own, else `default`."""
        if self.in_cluster:
            return kube.pod_namespace() or "default"
        if self.kubeconfig.is_file():
            return kube.context_namespace(self.kubeconfig, self.context) or "default"
        return "default"

    def up(self) -> Cluster:
        if self.in_cluster:
            return Cluster(self.name, "in-cluster", None)
        if not self.kubeconfig.is_file():
            raise ClusterError(
                f"no kubeconfig at {self.kubeconfig}: set KUBECONFIG (or --testenv-kubeconfig), run inside "
                "the cluster with a mounted ServiceAccount token, or use --testenv-cluster=local for a "
                "throwaway local cluster"
            )
        return Cluster(self.name, self.context or "current-context", self.kubeconfig, context=self.context)

    def down(self) -> None:
        """An existing cluster is not ours to delete."""

    def service_images(self, types: Set[str]) -> Mapping[str, str]:
        """Its operator's defaults (the chart's serviceImages) apply."""
        return {}

    def load_images(self, images: Sequence[str]) -> list[str]:
        """Its nodes pull from registries."""
        return []
