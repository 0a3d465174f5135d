"""The kind provider's decisions that need no engine: its config, its files and names."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import yaml

from testenv_harness.ground.errors import ToolchainError
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
    from testenv_harness.run.session import RunOptions, RunSession

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


def test_a_new_clusters_node_unpacks_the_runs_images_once_its_containerd_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While `kind create` runs, the node starts on the run's service images as soon as `ctr`
    answers in it, and only on those; a later `unpack_ahead` (after `up`) does not start again."""
    ours = {"redis": "kube-testenv.local/redis:1", "kafka": "kube-testenv.local/kafka:2"}
    monkeypatch.setattr(imagebuild, "service_images", lambda: ours)
    calls: list[tuple[str, ...]] = []
    answers = iter([False, False, True])

    def docker(*args: str) -> str:
        calls.append(args)
        if args[-1] == "version" and not next(answers):
            raise ToolchainError("no such container")
        return "\n".join(ours.values()) if args[-1] == "-q" else ""

    monkeypatch.setattr(imagebuild, "docker", docker)
    provider = KindProvider("t", report=lambda _: None)
    provider.unpack_first = frozenset({"kafka", "postgres"})
    provider._unpack_once_node_answers(
        NodeImage("kube-testenv.local/node:abc", local=True), threading.Event()
    )
    versions = [c for c in calls if c[-1] == "version"]
    assert len(versions) == 3
    (started,) = [c for c in calls if c[:2] == ("exec", "-d")]
    assert "kube-testenv.local/kafka:2" in started[-1]
    assert "redis" not in started[-1]
    calls.clear()
    provider.unpack_ahead(list(ours.values()))
    assert calls == []


def test_no_early_unpack_on_an_upstream_node_or_once_the_cluster_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(imagebuild, "service_images", lambda: {"redis": "kube-testenv.local/redis:1"})
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(imagebuild, "docker", lambda *args: calls.append(args) or "")
    provider = KindProvider("t", report=lambda _: None)
    provider.unpack_first = frozenset({"redis"})
    provider._unpack_once_node_answers(NodeImage(UPSTREAM_NODE_IMAGE, local=False), threading.Event())
    created = threading.Event()
    created.set()
    provider._unpack_once_node_answers(NodeImage("kube-testenv.local/node:abc", local=True), created)
    assert calls == []
