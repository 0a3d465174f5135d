"""What every cluster provider offers: get or create a cluster, and delete it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A reachable cluster: what a worker needs to talk to it."""

    provider: str
    name: str
    kubeconfig: Path
    #: Extra folder to put first on PATH (kubectl and friends), if the provider has one.
    bin_dir: Path | None = None


class Provider(Protocol):
    name: str

    def exists(self) -> bool: ...

    def up(self) -> Cluster:
        """Create the cluster, or reuse (and restart if stopped) one of the same name."""
        ...

    def down(self) -> None:
        """Delete the cluster and everything it runs; a no-op if there is none."""
        ...
