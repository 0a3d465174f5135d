"""The kind cluster is the real thing: a kubelet of our pinned version on containerd, its
control plane running as pods from images that were never pulled."""

from __future__ import annotations

import ipaddress
import subprocess

from kubernetes import client

from testenv_harness.ground import kube
from testenv_harness.ground.waiting import wait_for
from testenv_harness.provision import imagebuild, toolchain
from testenv_harness.provision.clusters import Cluster
from testenv_harness.provision.clusters.kind import KindProvider


def test_the_node_is_a_real_kubelet_of_the_pinned_version_on_containerd(kind_cluster: Cluster) -> None:
    (node,) = client.CoreV1Api(kube.api_client(kind_cluster.kubeconfig)).list_node().items
    info = node.status.node_info
    assert info.kubelet_version == toolchain.KUBERNETES_VERSION
    assert info.container_runtime_version.startswith("containerd://")
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status == "True", ready.message
    wide = subprocess.run(
        [
            str(toolchain.binary("kubectl")),
            "--kubeconfig",
            str(kind_cluster.kubeconfig),
            f"--cache-dir={toolchain.kube_cache_dir()}",  # not ~/.kube/cache
            "get",
            "nodes",
            "-o",
            "wide",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert toolchain.KUBERNETES_VERSION in wide
    assert "containerd://" in wide


def test_every_system_pod_runs_from_images_that_were_never_pulled(kind_cluster: Cluster) -> None:
    core = client.CoreV1Api(kube.api_client(kind_cluster.kubeconfig))

    def not_ready() -> list[str]:
        return [
            f"{pod.metadata.name}: {pod.status.phase}"
            for pod in core.list_namespaced_pod("kube-system").items
            if pod.status.phase != "Running" or not all(s.ready for s in pod.status.container_statuses or [])
        ]

    wait_for(lambda: not not_ready(), timeout=180, what="every kube-system pod to run and be ready")
    pods = core.list_namespaced_pod("kube-system").items
    components = {p.metadata.labels.get("component") or p.metadata.labels.get("k8s-app") for p in pods}
    assert {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} <= components
    assert {"kube-dns", "kube-proxy"} <= components
    images = {s.image for p in pods for s in p.status.container_statuses}
    assert all(image.startswith(f"{imagebuild.REPOSITORY}/") for image in images), images


def test_the_clusters_published_ports_listen_on_loopback_only(
    kind_cluster: Cluster, kind_provider: KindProvider
) -> None:
    """What the node container publishes on this machine (the API server's port) is reachable
    from this machine only, never from the network (issue 24: a cluster-admin endpoint)."""
    published = imagebuild.docker("port", f"{kind_provider.cluster_name}-control-plane").split("\n")
    published = [line for line in published if line.strip()]
    assert published, "the API server's port is published"
    for line in published:  # e.g. "6443/tcp -> 127.0.0.1:39415"
        address = line.split(" -> ", 1)[1].rsplit(":", 1)[0]
        assert ipaddress.ip_address(address.strip("[]")).is_loopback, line


def test_the_node_image_holds_every_service_image_so_a_new_cluster_loads_none(
    kind_cluster: Cluster, kind_provider: KindProvider
) -> None:
    """Issue 23: a first run on a new cluster spent ~43 s in `kind load`. Asked of the node image
    itself (its containerd started in a throwaway container, as its build does), so no earlier
    test's load can make this pass."""
    listing = (
        "(containerd >/dev/null 2>&1 &); "
        "for i in $(seq 1 100); do [ -S /run/containerd/containerd.sock ] && break; sleep 0.2; done; "
        "ctr -n k8s.io images list -q"
    )
    baked = imagebuild.docker(
        "run", "--rm", "--entrypoint", "sh", imagebuild.reference("node"), "-c", listing, timeout=120
    ).split()
    services = sorted(imagebuild.service_images().values())
    assert set(services) <= set(baked), sorted(set(services) - set(baked))
    assert set(services) <= kind_provider.node_images()
    assert kind_provider.load_images(services) == [], "nothing to copy into the node"
