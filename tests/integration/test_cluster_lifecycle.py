"""cluster-up and cluster-down are idempotent, restart a stopped cluster, and leave nothing behind."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest

from testenv_harness.ground import files
from testenv_harness.provision.clusters import LocalProvider, kwokctl_config


def test_up_reuse_restart_down_leaves_no_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A user's ~/.kube/config is theirs: the cluster must never be merged into it.
    monkeypatch.setenv("KUBE_TESTENV_CACHE", str(files.cache_root()))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    lines: list[str] = []
    provider = LocalProvider("testenv-lifecycle", nodes=1, report=lines.append)
    try:
        cluster = provider.up()
        assert provider.healthy()
        running = provider.processes()
        assert len(running) >= 5, f"expected etcd, apiserver, controller-manager, scheduler, kwok: {running}"

        again = provider.up()
        assert again == cluster
        assert any("reusing" in line for line in lines)
        assert sorted(provider.processes()) == sorted(running), "reuse must not start a second set"

        provider.stop()
        assert provider.processes() == []
        provider.up()
        assert any("restarting" in line for line in lines)
        assert provider.healthy()
        assert not (tmp_path / ".kube").exists(), "the user's kubeconfig was written"
    finally:
        provider.down()
    assert not (tmp_path / ".kube").exists()
    assert provider.processes() == []
    assert not provider.cluster_dir.exists()
    provider.down()  # a second delete is a no-op


def test_two_clusters_made_at_once_run_every_component_on_ports_of_their_own() -> None:
    """Two sessions (or xdist workers) creating clusters together: each picks its ports before
    kwokctl saves them, so without a lock both took the same and one scheduler never bound."""
    providers = [LocalProvider(f"testenv-twin-{n}", nodes=1, report=lambda _: None) for n in (1, 2)]
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for made in [pool.submit(provider.up) for provider in providers]:
                made.result()
        ports = [kwokctl_config.saved_ports(provider.cluster_dir / "kwok.yaml") for provider in providers]
        assert len(ports[0] | ports[1]) == 12, ports  # six each, none shared
        for provider in providers:
            assert provider.running_components() == {
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kwok-controller",
            }
    finally:
        for provider in providers:
            provider.down()
