"""The `kind` cluster, where a Docker engine exists: created once, then reused by name.

Built on kind's CLI (the pinned build from `make tools`). It cannot run on machines without
Docker, so only the command construction and the decisions are unit-tested here.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from testenv_harness import toolchain
from testenv_harness.clusters.base import Cluster
from testenv_harness.errors import ClusterError


def docker_available() -> bool:
    """True when a Docker engine answers (the client alone is not enough)."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        return subprocess.run([docker, "info"], capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class KindProvider:
    name = "kind"

    def __init__(self, cluster_name: str = "testenv", report: Callable[[str], None] = print) -> None:
        self.cluster_name = cluster_name
        self.report = report

    @property
    def kubeconfig(self) -> Path:
        return toolchain.cache_root() / "kind" / f"{self.cluster_name}.kubeconfig"

    def _kind(self, *args: str, timeout: float = 600) -> str:
        command = [str(toolchain.binary("kind")), *args]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"`kind {' '.join(args[:3])}` did not finish in {timeout:.0f}s") from exc
        if result.returncode != 0:
            raise ClusterError(
                f"`kind {' '.join(args)}` failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
            )
        return result.stdout

    def create_args(self) -> list[str]:
        return [
            "create",
            "cluster",
            "--name",
            self.cluster_name,
            "--kubeconfig",
            str(self.kubeconfig),
            "--wait",
            "180s",
        ]

    def exists(self) -> bool:
        return self.cluster_name in self._kind("get", "clusters").split()

    def up(self) -> Cluster:
        if not docker_available():
            raise ClusterError(
                "the kind provider needs a running Docker engine; use --testenv-cluster=local without one"
            )
        self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        if self.exists():
            self.report(f"reusing kind cluster {self.cluster_name!r}")
            self._kind(
                "export", "kubeconfig", "--name", self.cluster_name, "--kubeconfig", str(self.kubeconfig)
            )
        else:
            self.report(f"creating kind cluster {self.cluster_name!r}")
            self._kind(*self.create_args())
        return Cluster(self.name, self.cluster_name, self.kubeconfig)

    def load_images(self, images: Sequence[str]) -> None:
        """Copy locally built images into the cluster's nodes (no registry needed)."""
        if images:
            self._kind("load", "docker-image", "--name", self.cluster_name, *images)

    def down(self) -> None:
        self._kind("delete", "cluster", "--name", self.cluster_name)
