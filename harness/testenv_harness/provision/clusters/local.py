"""The `local` cluster: a real control plane run as host processes by kwokctl's binary runtime.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are the real programs,
built by `make tools`; kwok stands in for kubelets, so nodes and pods are simulated. Every
binary path is handed to kwokctl, which therefore never tries to download anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence, Set
from pathlib import Path

import yaml

from testenv_harness.ground import files
from testenv_harness.ground.errors import ClusterError
from testenv_harness.ground.waiting import WaitTimeoutError, wait_for
from testenv_harness.provision import toolchain
from testenv_harness.provision.clusters import kwokctl_config
from testenv_harness.provision.clusters.base import Cluster

DEFAULT_NAME = "testenv"
#: kwok CRDs the cluster serves, so the data plane can declare port-forward targets at run time.
_KWOK_CRDS = ("PortForward", "ClusterPortForward")

#: The processes of a running cluster, by their binaries' names in its `bin/` folder.
_COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok-controller")
_NODE_ANNOTATION = "kwok.x-k8s.io/node"


def kwok_workdir() -> Path:
    """kwokctl's state folder (clusters, logs, etcd data), kept apart from ~/.kwok."""
    return files.cache_root() / "kwok"


#: ClusterIPs for Services (kube-apiserver and kube-controller-manager must agree on it).
SERVICE_CIDR = "10.96.0.0/16"
#: What each simulated node offers; worker namespaces quota ephemeral-storage, so it is listed too.
_CAPACITY = {"cpu": "64", "memory": "256Gi", "ephemeral-storage": "1Ti", "pods": "500"}


def _node_manifest(name: str) -> dict[str, object]:
    capacity = dict(_CAPACITY)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "status": {"allocatable": capacity, "capacity": capacity},
    }


class LocalProvider:
    """Creates, reuses and deletes a kwokctl binary-runtime cluster."""

    name = "local"
    default_operator = "subprocess"
    simulated_pods = True

    def __init__(
        self,
        cluster_name: str = DEFAULT_NAME,
        nodes: int = 2,
        timeout: float = 180.0,
        report: Callable[[str], None] = print,
    ) -> None:
        if not cluster_name or len(cluster_name) > 40:
            raise ValueError(f"cluster name {cluster_name!r} must be 1 to 40 characters")
        if nodes < 1:
            raise ValueError(f"nodes must be at least 1, got {nodes}")
        self.cluster_name = cluster_name
        self.nodes = nodes
        self.timeout = timeout
        self.report = report

    @property
    def cluster_dir(self) -> Path:
        return kwok_workdir() / "clusters" / self.cluster_name

    @property
    def kubeconfig(self) -> Path:
        return self.cluster_dir / "kubeconfig.yaml"

    def _env(self) -> dict[str, str]:
        binaries = toolchain.bin_dir()
        return dict(
            os.environ,
            PATH=f"{binaries}{os.pathsep}{os.environ.get('PATH', '')}",
            KWOK_WORKDIR=str(kwok_workdir()),
            KWOK_RUNTIME="binary",
            KWOK_KUBE_VERSION=toolchain.KUBERNETES_VERSION,
            KWOK_KUBE_BINARY_PREFIX=str(binaries),
            KWOK_KUBECTL_BINARY=str(binaries / "kubectl"),
            KWOK_CONTROLLER_BINARY=str(binaries / "kwok"),
            KWOK_ETCD_BINARY=str(binaries / "etcd"),
            # RBAC and admission on, as in a real cluster: quotas, limit ranges and Pod
            # Security labels are enforced, and a ServiceAccount only gets what it is bound to.
            KWOK_KUBE_AUTHORIZATION="true",
            KWOK_KUBE_ADMISSION="true",
            # kubectl's discovery cache would otherwise land in the user's ~/.kube/cache.
            KUBECACHEDIR=str(toolchain.kube_cache_dir()),
        )

    def _run(self, *args: str, timeout: float | None = None, stdin: str | None = None) -> str:
        try:
            result = subprocess.run(
                list(args),
                env=self._env(),
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout or self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"`{' '.join(args[:4])} ...` did not finish in {exc.timeout:.0f}s") from exc
        if result.returncode != 0:
            raise ClusterError(
                f"`{' '.join(args[:4])} ...` failed (exit {result.returncode}) for cluster "
                f"{self.cluster_name!r}:\n{(result.stderr or result.stdout).strip()[-3000:]}"
            )
        return result.stdout

    def _kwokctl(self, *args: str, timeout: float | None = None) -> str:
        return self._run(
            str(toolchain.binary("kwokctl")), *args, "--name", self.cluster_name, timeout=timeout
        )

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float | None = None) -> str:
        """Run the pinned kubectl against this cluster."""
        kubectl = str(toolchain.binary("kubectl"))
        return self._run(kubectl, "--kubeconfig", str(self.kubeconfig), *args, stdin=stdin, timeout=timeout)

    def exists(self) -> bool:
        return self.kubeconfig.is_file()

    def healthy(self) -> bool:
        if not self.exists():
            return False
        try:
            return self.kubectl("get", "--raw", "/readyz", timeout=10).strip() == "ok"
        except ClusterError:
            return False

    def _check_tools(self) -> None:
        for name in (
            "kwokctl",
            "kwok",
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ):
            toolchain.binary(name)  # raises naming `make tools`
        toolchain.link_bin_dir()

    def up(self) -> Cluster:
        self._check_tools()
        started = time.monotonic()
        self._replace_if_exposed()
        if self.healthy():
            self.report(f"reusing local cluster {self.cluster_name!r}")
        elif self.exists():
            self.report(f"restarting stopped local cluster {self.cluster_name!r}")
            self._kwokctl("start", "cluster", "--timeout", f"{self.timeout:.0f}s")
            self._wait_ready()
        else:
            self._create()
        self._ensure_nodes()
        took = time.monotonic() - started
        self.report(f"local cluster {self.cluster_name!r} ready in {took:.1f}s ({self.kubeconfig})")
        return Cluster(self.name, self.cluster_name, self.kubeconfig, toolchain.bin_dir())

    def _replace_if_exposed(self) -> None:
        """Delete a cluster made before it was kept to loopback, so that `up` makes a new one.

        kwokctl restarts a cluster with the flags it was created with: one made by an older
        version would go on serving etcd, unauthenticated, on every interface.
        """
        if self.exists() and not kwokctl_config.is_loopback_with_etcd_tls(self.cluster_dir / "kwok.yaml"):
            self.report(
                f"local cluster {self.cluster_name!r} was made by an older kube-testenv and listens on "
                "every interface with a plain-HTTP etcd: deleting it to create it anew"
            )
            self.down()

    def _create(self) -> None:
        self.report(f"creating local cluster {self.cluster_name!r} (kwokctl, binary runtime)")
        try:
            # Ports are picked free and not saved by another cluster: two clusters made at once
            # would pick the same ones (seen: a scheduler that never bound, pods never placed).
            # One creation at a time, until kwokctl has saved this one's.
            creating = files.locked(self.cluster_dir.parent.parent / ".create.lock")
            with creating, kwokctl_config.config_file(self.cluster_dir) as config:
                self._create_with(config)
            # kwokctl makes it group-readable (0750); it holds the admin key and etcd's data.
            self.cluster_dir.chmod(0o700)
            self._wait_ready()
            self._check_components()
        except ClusterError as exc:
            logs = self._component_logs()
            self.down()  # a failed create leaves nothing half-made behind
            raise ClusterError(
                f"{exc}\n{logs}\nhint: the partial cluster was deleted; retry `make cluster-up`"
            ) from exc

    def _create_with(self, config: Path) -> None:
        """`kwokctl create cluster`; `config` keeps every component on loopback and etcd on TLS."""
        self._kwokctl(
            "create",
            "cluster",
            f"--config={config}",
            "--enable-crds",
            ",".join(_KWOK_CRDS),
            # Client QPS limits make the namespace controller take minutes to delete a few
            # dozen namespaces (it lists and deletes every resource type in each one).
            "--disable-qps-limits",
            "--extra-args",
            "kube-controller-manager=concurrent-namespace-syncs=20",
            # The API server's default Service range, a /24, holds 254 Services: 85 workers of
            # three services. A /16 holds what the worker limit allows (256 x 16 services).
            "--extra-args",
            f"kube-apiserver=service-cluster-ip-range={SERVICE_CIDR}",
            "--extra-args",
            f"kube-controller-manager=service-cluster-ip-range={SERVICE_CIDR}",
            "--wait",
            f"{self.timeout:.0f}s",
            "--timeout",
            f"{self.timeout:.0f}s",
            # Empty: kwokctl's default merges the cluster into ~/.kube/config and switches the
            # user's current context. Ours is the cluster's own kubeconfig.yaml.
            "--kubeconfig=",
        )

    def running_components(self) -> set[str]:
        """The names of this cluster's components running now (etcd, kube-apiserver, ...)."""
        running = set()
        for pid in self.processes():
            with contextlib.suppress(OSError):
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
                if Path(argv0).parent == self.cluster_dir / "bin":
                    running.add(Path(argv0).name)
        return running

    def _check_components(self) -> None:
        """Every component is still running once the API server answers. One that exited at start
        (its port taken by another program since it was picked) is otherwise seen only as pods
        that are never made or never placed."""
        running = self.running_components()
        exited = [component for component in _COMPONENTS if component not in running]
        if exited:
            raise ClusterError(f"{', '.join(exited)} of {self.cluster_name!r} exited at start")

    def _component_logs(self) -> str:
        tails = []
        for component in _COMPONENTS:
            path = self.cluster_dir / "logs" / f"{component}.log"
            if path.is_file():
                lines = path.read_text(errors="replace").splitlines()[-15:]
                tails.append(f"--- last lines of {path}:\n" + "\n".join(lines))
        return "\n".join(tails)

    def _wait_ready(self) -> None:
        try:
            wait_for(
                self.healthy,
                timeout=self.timeout,
                what=f"the API server of {self.cluster_name!r} to answer /readyz with ok",
                interval=0.5,
                seen=lambda: "no ok",
            )
        except WaitTimeoutError as exc:
            raise ClusterError(str(exc)) from exc

    def _ensure_nodes(self) -> None:
        names = [f"kwok-node-{i}" for i in range(self.nodes)]
        manifest = yaml.safe_dump_all([_node_manifest(name) for name in names])
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=manifest)
        # Status is only taken from a create: a node made by an older version gets it patched.
        status = json.dumps({"status": {"allocatable": _CAPACITY, "capacity": _CAPACITY}})
        for name in names:
            self.kubectl("patch", "node", name, "--subresource=status", "--type=merge", "-p", status)
        self.kubectl(
            "wait",
            "--for=condition=Ready",
            "node",
            "-l",
            "type=kwok",
            f"--timeout={self.timeout:.0f}s",
            timeout=self.timeout + 10,
        )

    def processes(self) -> list[int]:
        """PIDs of every process of this cluster (each has the cluster's folder on its command line)."""
        marker = str(self.cluster_dir).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if marker in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
                except OSError:  # the process ended while we looked
                    continue
        return pids

    def _wait_exited(self, timeout: float = 15) -> None:
        """kwokctl returns before every process has exited: wait, then kill stragglers."""
        with contextlib.suppress(WaitTimeoutError):
            wait_for(lambda: not self.processes(), timeout=timeout, what=f"{self.cluster_name!r} to exit")
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """Stop the processes but keep the state; `up` restarts them."""
        if self.exists():
            self._kwokctl("stop", "cluster")
            self._wait_exited()

    def service_images(self, types: Set[str]) -> Mapping[str, str]:
        """No container runs here: the data plane starts host programs whatever the image says."""
        return {}

    def load_images(self, images: Sequence[str]) -> list[str]:
        """Nothing to load: kwok's pods run no images."""
        return []

    def down(self) -> None:
        if not self.cluster_dir.exists():
            return
        self.report(f"deleting local cluster {self.cluster_name!r}")
        # kwokctl removes the cluster's context from this file: ours, deleted with the cluster.
        self._kwokctl("delete", "cluster", f"--kubeconfig={self.kubeconfig}")
        self._wait_exited()
