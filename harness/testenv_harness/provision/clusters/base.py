"""What every cluster provider offers: get or create a cluster, and delete it; and what differs
between clusters, so the rest of the harness never asks which provider it runs on."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence, Set
from pathlib import Path
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A reachable cluster: what a worker needs to talk to it."""

    provider: str
    name: str
    #: None: the pod's own ServiceAccount token (in-cluster configuration).
    kubeconfig: Path | None
    #: Extra folder to put first on PATH (kubectl and friends), if the provider has one.
    bin_dir: Path | None = None
    #: The kubeconfig context to use; None for its current one.
    context: str | None = None


class Provider(Protocol):
    name: str
    #: Where the operator runs unless --testenv-operator says: "subprocess" (ours, for this run)
    #: or "cluster" (installed there, e.g. with the Helm chart).
    default_operator: str
    #: Whether pods are only simulated here, so the harness must serve them with host processes.
    simulated_pods: bool

    def exists(self) -> bool: ...

    def up(self) -> Cluster:
        """Create the cluster, or reuse (and restart if stopped) one of the same name."""
        ...

    def down(self) -> None:
        """Delete the cluster and everything it runs; a no-op if there is none."""
        ...

    def service_images(self, types: Set[str]) -> Mapping[str, str]:
        """Images this cluster must use for these service types instead of the catalog's, if any."""
        ...

    def load_images(self, images: Sequence[str]) -> list[str]:
        """Make locally built images available to the cluster's nodes (a no-op where not needed);
        returns the images it had to copy."""
        ...
