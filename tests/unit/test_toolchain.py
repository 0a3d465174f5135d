from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterable
from pathlib import Path

import pytest

from testenv_harness.ground import files
from testenv_harness.ground.errors import ToolchainError
from testenv_harness.provision import toolchain


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", str(tmp_path))
    return tmp_path


def test_cache_root_honours_override_then_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBE_TESTENV_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert files.cache_root() == tmp_path / "xdg" / "kube-testenv"
    monkeypatch.setenv("KUBE_TESTENV_CACHE", str(tmp_path / "explicit"))
    assert files.cache_root() == tmp_path / "explicit"


def test_every_wrapper_module_is_shipped_with_its_checksums() -> None:
    for tool in toolchain.TOOLS:
        for name in ("go.mod", "go.sum", "tools.go"):
            assert (tool.module_dir / name).is_file(), f"{tool.name}/{name} missing"
        assert tool.version in (tool.module_dir / "go.mod").read_text()


def test_kubernetes_staging_modules_are_pinned_to_the_matching_minor() -> None:
    kube = next(t for t in toolchain.TOOLS if t.name == "kubernetes")
    gomod = (kube.module_dir / "go.mod").read_text()
    staging = toolchain.KUBERNETES_VERSION.replace("v1.", "v0.", 1)
    replaced = [line.split()[0] for line in gomod.splitlines() if "=>" in line]
    assert len(replaced) > 25
    for module in replaced:
        assert f"{module} => {module} {staging}" in gomod
    assert "godebug default=" in gomod


def test_kubernetes_binaries_are_stamped_with_the_release_version() -> None:
    kube = next(t for t in toolchain.TOOLS if t.name == "kubernetes")
    flags = " ".join(kube.ldflags)
    assert f"k8s.io/component-base/version.gitVersion={toolchain.KUBERNETES_VERSION}" in flags
    assert f"k8s.io/client-go/pkg/version.gitVersion={toolchain.KUBERNETES_VERSION}" in flags


def test_cache_key_is_stable_and_names_the_version() -> None:
    for tool in toolchain.TOOLS:
        assert tool.key() == tool.key()
        assert tool.key().startswith(f"{tool.name}-{tool.version}-")
    assert len({t.key() for t in toolchain.TOOLS}) == len(toolchain.TOOLS)


def test_cache_key_changes_with_link_flags() -> None:
    tool = toolchain.TOOLS[0]
    other = toolchain.GoTool(tool.name, tool.version, tool.binaries, (*tool.ldflags, "-X a.b=c"))
    assert other.key() != tool.key()


def test_missing_binary_names_the_command_that_builds_it(empty_cache: Path) -> None:
    with pytest.raises(ToolchainError, match=r"kube-apiserver v1\.36\.\d+ is not built .*make tools"):
        toolchain.binary("kube-apiserver")
    assert {t.name for t in toolchain.missing()} == {t.name for t in toolchain.tools_of("local")}
    with pytest.raises(ToolchainError, match=r"kubelet v1\.36\.\d+ is not built .*make kind-images"):
        toolchain.binary("kubelet")


def test_make_tools_builds_only_what_the_local_cluster_needs() -> None:
    local = {name for tool in toolchain.tools_of("local") for name in tool.binaries}
    assert {"kube-apiserver", "etcd", "kwokctl", "helm", "kind"} <= local
    assert not local & {"kubelet", "kubeadm", "kube-proxy", "coredns", "crictl"}


def test_unknown_binary_lists_the_known_ones(empty_cache: Path) -> None:
    with pytest.raises(ToolchainError, match=r"unknown tool 'containerd'.*kube-apiserver"):
        toolchain.binary("containerd")


def test_cached_tool_is_not_rebuilt(empty_cache: Path) -> None:
    tool = toolchain.TOOLS[1]
    toolchain.tool_dir(tool).mkdir(parents=True)
    assert toolchain.build_one(tool, report=lambda _: None) == 0.0


def _built(tools: Iterable[toolchain.GoTool]) -> None:
    """Each tool's cache folder with a stand-in for each of its binaries, as `build_one` leaves it."""
    for tool in tools:
        folder = toolchain.tool_dir(tool)
        folder.mkdir(parents=True)
        for name in tool.binaries:
            (folder / name).write_text("#!/bin/sh\n")


def test_bin_dir_links_every_binary(empty_cache: Path) -> None:
    _built(toolchain.TOOLS)
    linked = toolchain.link_bin_dir()
    local = [name for tool in toolchain.tools_of("local") for name in tool.binaries]
    assert sorted(p.name for p in linked.iterdir()) == sorted(local)
    assert (linked / "etcd").resolve() == (toolchain.tool_dir(toolchain.TOOLS[1]) / "etcd").resolve()


def test_bin_dir_links_made_at_once_by_many_callers_all_succeed(empty_cache: Path) -> None:
    """Two clusters starting together each link the folder: none may fail on the other's links."""
    _built(toolchain.tools_of("local"))
    stale = toolchain.bin_dir() / "etcd"
    stale.parent.mkdir(parents=True)
    stale.symlink_to("/nowhere/etcd")  # left by an older build: replaced, not kept
    start = threading.Barrier(8)

    def link() -> None:
        start.wait()
        for _ in range(20):
            toolchain.link_bin_dir()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for done in [pool.submit(link) for _ in range(8)]:
            done.result()
    local = [name for tool in toolchain.tools_of("local") for name in tool.binaries]
    assert sorted(p.name for p in toolchain.bin_dir().iterdir()) == sorted(local)
    for tool in toolchain.tools_of("local"):
        for name in tool.binaries:
            assert (toolchain.bin_dir() / name).resolve() == (toolchain.tool_dir(tool) / name).resolve()
