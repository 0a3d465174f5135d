"""The `kind` cluster, where a Docker engine answers: created once on a pinned node image, then
reused by name.

The node image is our own offline build (`make kind-images`: `kube-testenv.local/node:<key>`)
when the engine has it, otherwise upstream's `kindest/node` for the same Kubernetes minor,
pinned by digest. The cluster gets a Docker network of its own, and its kubeconfig is written
to our cache, never into ~/.kube/config.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence, Set
from pathlib import Path
from typing import Any

import yaml

from testenv_harness.ground import files, kube
from testenv_harness.ground.errors import ClusterError, ToolchainError
from testenv_harness.provision import imagebuild, toolchain
from testenv_harness.provision.clusters import isolation_probe, policy_engine
from testenv_harness.provision.clusters.base import Cluster

#: kind v0.33.0 built no v1.36.3 node; its v1.36 image, pinned by digest as kind's notes ask.
UPSTREAM_NODE_IMAGE = (
    "kindest/node:v1.36.4@sha256:099e049362a1526b2db71494e1947aae99bd16290d7c895f2b7ea312e3cbfaed"
)
NETWORK_PREFIX = "kube-testenv-"


def docker_available() -> bool:
    """True when a Docker engine answers (the client alone is not enough)."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        return subprocess.run([docker, "info"], capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _cgroup_v1_engine() -> bool:
    try:
        return imagebuild.docker("info", "--format", "{{.CgroupVersion}}").strip() == "1"
    except ToolchainError:
        return False


@dataclasses.dataclass(frozen=True)
class NodeImage:
    reference: str
    #: Built by us: components under our repository, static CNI, nothing to pull.
    local: bool


def node_image() -> NodeImage | None:
    """The node image to use, or None when neither ours nor upstream's can be had here."""
    ours = imagebuild.reference("node")
    if imagebuild.present(ours):
        return NodeImage(ours, local=True)
    if imagebuild.present(UPSTREAM_NODE_IMAGE):
        return NodeImage(UPSTREAM_NODE_IMAGE, local=False)
    try:  # asks the registry for the manifest only; nothing is pulled
        imagebuild.docker("manifest", "inspect", UPSTREAM_NODE_IMAGE, timeout=15)
    except ToolchainError:
        return None
    return NodeImage(UPSTREAM_NODE_IMAGE, local=False)


def _readiness() -> tuple[NodeImage | None, str]:
    """The node image kind would start on, or why kind cannot start here (one of the two)."""
    if not docker_available():
        return None, "no Docker engine answers (`make system-deps` installs and starts one)"
    try:
        toolchain.binary("kind")
    except ToolchainError:
        return None, "the kind CLI is not built (`make tools`)"
    node = node_image()
    if node is None:
        return None, (
            f"no node image: ours is not built (`make kind-images`) and {UPSTREAM_NODE_IMAGE.split('@')[0]} "
            "cannot be pulled"
        )
    return node, ""


def why_not_kind() -> str:
    """Why kind cannot start here ("" when it can): the one line `auto` prints before local."""
    return _readiness()[1]


def cluster_config(node: NodeImage, cgroup_v1: bool) -> dict[str, Any]:
    """kind's Cluster config: one node on `node`, kubeadm pointed at our images where they are ours."""
    patches: list[str] = []
    if node.local:
        cluster = {
            "kind": "ClusterConfiguration",
            "imageRepository": imagebuild.REPOSITORY,
            "etcd": {"local": {"imageTag": toolchain.ETCD_VERSION.lstrip("v")}},
            "dns": {"imageTag": toolchain.COREDNS_VERSION},
        }
        patches.append(yaml.safe_dump(cluster))
    if cgroup_v1:
        # kubelet 1.35+ refuses cgroup v1 unless told otherwise.
        patches.append(yaml.safe_dump({"kind": "KubeletConfiguration", "failCgroupV1": False}))
    config: dict[str, Any] = {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "nodes": [{"role": "control-plane", "image": node.reference}],
    }
    # The API server's published port on loopback only (kind's default, said here on purpose: a
    # cluster-admin endpoint must never listen on every interface of a laptop or a CI runner).
    config["networking"] = {"apiServerAddress": "127.0.0.1"}
    if node.local:
        # Our node carries a static CNI configuration; kind's kindnetd image cannot be had offline.
        config["networking"]["disableDefaultCNI"] = True
    if patches:
        config["kubeadmConfigPatches"] = patches
    return config


class KindProvider:
    name = "kind"
    default_operator = "subprocess"
    simulated_pods = False

    def __init__(self, cluster_name: str = "testenv", report: Callable[[str], None] = print) -> None:
        self.cluster_name = cluster_name
        self.report = report

    @property
    def state_dir(self) -> Path:
        return files.cache_root() / "kind"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / f"{self.cluster_name}.kubeconfig"

    @property
    def config_file(self) -> Path:
        return self.state_dir / f"{self.cluster_name}.kind.yaml"

    @property
    def network(self) -> str:
        return f"{NETWORK_PREFIX}{self.cluster_name}"

    def _kind(self, *args: str, timeout: float = 600) -> str:
        command = [str(toolchain.binary("kind")), *args]
        # Our own Docker network per cluster, so `down` can remove it without touching kind's.
        env = dict(os.environ, KIND_EXPERIMENTAL_DOCKER_NETWORK=self.network)
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, env=env, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"`kind {' '.join(args[:3])}` did not finish in {timeout:.0f}s") from exc
        if result.returncode != 0:
            raise ClusterError(
                f"`kind {' '.join(args)}` failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
            )
        return result.stdout

    def exists(self) -> bool:
        if not docker_available():
            return False
        return self.cluster_name in self._kind("get", "clusters").split()

    def up(self) -> Cluster:
        node, reason = _readiness()
        if node is None:
            raise ClusterError(f"cannot use kind here: {reason}; or use --testenv-cluster=local")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.exists():
            self.report(f"reusing kind cluster {self.cluster_name!r}")
            self._kind(
                "export", "kubeconfig", "--name", self.cluster_name, "--kubeconfig", str(self.kubeconfig)
            )
            if self.isolation_file.is_file() and "WARNING" in (said := self.isolation_file.read_text()):
                self.report(said.strip())
            return self._cluster()
        config = self.config_file
        config.write_text(yaml.safe_dump(cluster_config(node, _cgroup_v1_engine()), sort_keys=False))
        self.report(f"creating kind cluster {self.cluster_name!r} on {node.reference}")
        try:
            self._kind(
                "create",
                "cluster",
                "--name",
                self.cluster_name,
                "--config",
                str(config),
                "--kubeconfig",
                str(self.kubeconfig),
                "--wait",
                "180s",
            )
        except ClusterError:
            # kind deletes a failed cluster itself unless told to retain it; the network is ours.
            self._remove_network()
            raise
        if node.local:
            self._install_policy_engine()
        self._probe_isolation(node)
        return self._cluster()

    def _install_policy_engine(self) -> None:
        """kube-router's firewall on our node (its static CNI enforces nothing by itself)."""
        image = policy_engine.image()
        if image not in self.node_images():  # a node image built before it was embedded
            self.load_images([image])
        policy_engine.install(self.node_container)
        self.report(f"NetworkPolicies enforced by {policy_engine.NAME} ({image})")

    def _probe_isolation(self, node: NodeImage) -> None:
        """Check once, on a new cluster, that policies really are enforced; the verdict is kept
        beside the kubeconfig and repeated when the cluster is reused without enforcement."""
        image = imagebuild.reference(imagebuild.PROBE_IMAGE) if node.local else isolation_probe.UPSTREAM_IMAGE
        api = kube.api_client(self.kubeconfig)
        try:
            verdict = isolation_probe.probe(api, "default", image)
        finally:
            api.close()
        message = verdict.message(f"kind cluster {self.cluster_name!r}")
        self.isolation_file.write_text(message + "\n")
        self.report(message)

    @property
    def isolation_file(self) -> Path:
        return self.state_dir / f"{self.cluster_name}.isolation"

    @property
    def node_container(self) -> str:
        return f"{self.cluster_name}-control-plane"

    def _cluster(self) -> Cluster:
        return Cluster(self.name, self.cluster_name, self.kubeconfig, bin_dir=toolchain.bin_dir())

    def node_is_ours(self) -> bool:
        """Whether the cluster's node runs our offline node image (then no image can be pulled)."""
        try:
            image = imagebuild.docker(
                "inspect", "--format", "{{.Config.Image}}", f"{self.cluster_name}-control-plane"
            ).strip()
        except ToolchainError:
            return False
        return image.startswith(f"{imagebuild.REPOSITORY}/")

    def service_images(self, types: Set[str]) -> Mapping[str, str]:
        """On our node image, every service runs our build of its image (nothing can be pulled)."""
        if not self.node_is_ours():
            return {}
        ours = imagebuild.service_images()
        chosen = {kind: ours[kind] for kind in sorted(types) if kind in ours}
        missing = [ref for ref in chosen.values() if not imagebuild.present(ref)]
        if missing:
            raise ClusterError(
                f"kind cluster {self.cluster_name!r} runs our offline node image, so its services need our "
                f"images too, and {', '.join(missing)} is not built: run `make kind-images` "
                "(or `testenv images build <type>`)"
            )
        return chosen

    def node_images(self) -> set[str]:
        """The image references the node's containerd holds (our node image comes with the
        service images in it); empty if it cannot be asked."""
        try:
            listed = imagebuild.docker(
                "exec", f"{self.cluster_name}-control-plane", "ctr", "-n", "k8s.io", "images", "list", "-q"
            )
        except ToolchainError:
            return set()
        return set(listed.split())

    def unpack_ahead(self, images: Sequence[str]) -> None:
        """Start unpacking, in the background, those of `images` the node holds: our node image
        carries the service images packed (its build cannot mount a snapshotter), and a pod's first
        start would unpack its image on the way. Run while the operator starts, this saves that."""
        have = self.node_images()
        present = [image for image in images if image in have]
        if not present:
            return
        each = " ".join(
            f'(mkdir -p /tmp/unpack-{i} && ctr -n k8s.io images mount "{ref}" /tmp/unpack-{i} >/dev/null '
            f"&& ctr -n k8s.io images unmount --rm /tmp/unpack-{i} >/dev/null) &"
            for i, ref in enumerate(present)
        )
        try:
            imagebuild.docker("exec", "-d", f"{self.cluster_name}-control-plane", "sh", "-c", f"{each} wait")
        except ToolchainError as exc:  # only a head start: the pods unpack what is left
            self.report(f"could not unpack the service images ahead: {exc}")
            return
        self.report(f"unpacking {len(present)} service image(s) in the node ahead of their pods")

    def load_images(self, images: Sequence[str]) -> list[str]:
        """Copy into the node the images it lacks; returns those. (kind would also skip an image
        the node has by ID, but only after saving every image it was given.)"""
        have = self.node_images()
        missing = [image for image in images if image not in have]
        if missing:
            self.report(f"loading {len(missing)} image(s) into the kind node: {', '.join(missing)}")
            self._kind("load", "docker-image", "--name", self.cluster_name, *missing)
        return missing

    def load_local(self, images: Sequence[str]) -> list[str]:
        """Of the images a spec names (a team's own `docker build -t gateway:dev .`), load those
        the local engine has into the node, as kind users do by hand; the others are left to the
        node to pull. Returns the loaded ones."""
        local = sorted({image for image in images if imagebuild.present(image)})
        return self.load_images(local)

    def down(self) -> None:
        if docker_available():
            # With --kubeconfig, kind edits our file only (by default it edits ~/.kube/config).
            self._kind("delete", "cluster", "--name", self.cluster_name, "--kubeconfig", str(self.kubeconfig))
            self._remove_network()
        self.kubeconfig.unlink(missing_ok=True)
        self.config_file.unlink(missing_ok=True)
        self.isolation_file.unlink(missing_ok=True)

    def _remove_network(self) -> None:
        try:
            imagebuild.docker("network", "rm", self.network)
        except ToolchainError as exc:
            if "No such network" not in str(exc) and "not found" not in str(exc):
                raise ClusterError(f"could not remove the Docker network {self.network}: {exc}") from exc
