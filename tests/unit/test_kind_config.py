"""The kind provider's decisions that need no engine: its config, its files and names."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from testenv_harness.provision import imagebuild, toolchain
from testenv_harness.provision.clusters.kind import (
    UPSTREAM_NODE_IMAGE,
    KindProvider,
    NodeImage,
    cluster_config,
)


def _patches(config: dict[str, object]) -> list[dict[str, object]]:
    return [yaml.safe_load(p) for p in config.get("kubeadmConfigPatches", [])]  # type: ignore[attr-defined]


def test_our_node_points_kubeadm_at_our_repository_and_brings_its_own_cni() -> None:
    config = cluster_config(NodeImage("kube-testenv.local/node:abc", local=True), cgroup_v1=False)
    assert config["nodes"] == [{"role": "control-plane", "image": "kube-testenv.local/node:abc"}]
    assert config["networking"] == {"apiServerAddress": "127.0.0.1", "disableDefaultCNI": True}
    (cluster,) = _patches(config)
    assert cluster["imageRepository"] == imagebuild.REPOSITORY
    assert cluster["etcd"] == {"local": {"imageTag": toolchain.ETCD_VERSION.lstrip("v")}}
    assert cluster["dns"] == {"imageTag": toolchain.COREDNS_VERSION}


def test_upstream_node_is_left_to_its_defaults_and_pinned_by_digest() -> None:
    config = cluster_config(NodeImage(UPSTREAM_NODE_IMAGE, local=False), cgroup_v1=False)
    assert "@sha256:" in config["nodes"][0]["image"]  # type: ignore[index]
    assert config["networking"] == {"apiServerAddress": "127.0.0.1"}, "never on every interface"
    assert "kubeadmConfigPatches" not in config


@pytest.mark.parametrize("local", [True, False])
def test_cgroup_v1_hosts_get_the_kubelet_patch_and_only_they(local: bool) -> None:
    node = NodeImage("x", local=local)
    kubelet = {"kind": "KubeletConfiguration", "failCgroupV1": False}
    assert kubelet in _patches(cluster_config(node, cgroup_v1=True))
    assert kubelet not in _patches(cluster_config(node, cgroup_v1=False))


def test_state_stays_in_our_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", str(tmp_path))
    provider = KindProvider("ci")
    assert provider.kubeconfig == tmp_path / "kind" / "ci.kubeconfig"
    assert provider.network == "kube-testenv-ci"


class _Provider:
    """A provider whose cluster runs its own builds of some service types."""

    def __init__(self, images: dict[str, str]) -> None:
        self.images = images
        self.loaded: list[str] = []

    def service_images(self, types: set[str]) -> dict[str, str]:
        return {kind: ref for kind, ref in self.images.items() if kind in types}

    def load_images(self, images: list[str]) -> list[str]:
        self.loaded += images
        return images


def test_services_without_their_own_image_get_the_providers_and_only_those_are_loaded() -> None:
    from testenv_harness.run.options import RunOptions
    from testenv_harness.run.session import RunSession

    session = RunSession(RunOptions(workers=1, manifest={}), report=lambda line: None)
    provider = _Provider({"redis": "kube-testenv.local/redis:1", "kafka": "kube-testenv.local/kafka:2"})
    session.provider = provider  # type: ignore[assignment]
    spec = {
        "services": [
            {"name": "cache", "type": "redis"},
            {"name": "events", "type": "kafka", "image": "mirror.example/kafka:4.1.1"},
            {"name": "app", "type": "custom", "custom": {"image": "app:1", "ports": []}},
        ]
    }
    try:
        session._use_provider_images(spec)
    finally:
        shutil.rmtree(session.run_dir)
    assert spec["services"][0]["image"] == "kube-testenv.local/redis:1"
    assert spec["services"][1]["image"] == "mirror.example/kafka:4.1.1", "an explicit image is kept"
    assert "image" not in spec["services"][2]
    assert provider.loaded == ["kube-testenv.local/redis:1"]
