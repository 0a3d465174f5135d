"""cluster-up and cluster-down are idempotent, restart a stopped cluster, and leave nothing behind."""

from __future__ import annotations

from testenv_harness.clusters import LocalProvider


def test_up_reuse_restart_down_leaves_no_process() -> None:
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
    finally:
        provider.down()
    assert provider.processes() == []
    assert not provider.cluster_dir.exists()
    provider.down()  # a second delete is a no-op
