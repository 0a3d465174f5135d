from __future__ import annotations

from pathlib import Path

import pytest

from testenv_harness.ground.errors import ToolchainError
from testenv_harness.provision import toolchain
from testenv_harness.provision.clusters.local import LocalProvider, _node_manifest


def test_kwokctl_is_pointed_at_every_pinned_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", str(tmp_path))
    env = LocalProvider()._env()
    binaries = toolchain.bin_dir()
    assert env["KWOK_RUNTIME"] == "binary"
    assert env["KWOK_KUBE_VERSION"] == toolchain.KUBERNETES_VERSION
    assert env["KWOK_KUBE_BINARY_PREFIX"] == str(binaries)
    for key, name in [
        ("KWOK_KUBECTL_BINARY", "kubectl"),
        ("KWOK_ETCD_BINARY", "etcd"),
        ("KWOK_CONTROLLER_BINARY", "kwok"),
    ]:
        assert env[key] == str(binaries / name)
    assert env["KWOK_WORKDIR"] == str(tmp_path / "kwok")
    assert env["PATH"].startswith(f"{binaries}:")


def test_up_without_tools_names_make_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", str(tmp_path))
    with pytest.raises(ToolchainError, match="make tools"):
        LocalProvider(report=lambda _: None).up()


def test_down_without_a_cluster_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", str(tmp_path))
    provider = LocalProvider("nothing-here", report=lambda _: None)
    assert not provider.exists()
    provider.down()


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"cluster_name": ""}, "1 to 40"), ({"nodes": 0}, "at least 1")]
)
def test_bad_arguments_are_refused_early(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalProvider(**kwargs)  # type: ignore[arg-type]


def test_nodes_are_managed_by_kwok_and_have_room() -> None:
    node = _node_manifest("kwok-node-0")
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"  # type: ignore[index]
    assert node["status"]["capacity"]["pods"] == "500"  # type: ignore[index]


def test_what_the_local_data_plane_cannot_run_is_refused_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from testenv_harness.dataplane import runners
    from testenv_harness.ground.errors import ManifestError
    from testenv_harness.run.options import RunOptions
    from testenv_harness.run.session import RunSession

    assert runners.cannot_serve(["redis", "kafka", "mosquitto", "postgres"]) == ""
    assert "custom" in runners.cannot_serve(["redis", "custom"])
    assert "--testenv-cluster kind" in runners.cannot_serve(["custom"])
    custom = {
        "name": "gw",
        "type": "custom",
        "custom": {"image": "gateway:dev", "ports": [{"name": "h", "port": 80}]},
    }
    manifest = {"kind": "TestEnvironment", "spec": {"services": [{"name": "r", "type": "redis"}, custom]}}
    session = RunSession(
        RunOptions(workers=1, manifest=manifest, provider="local", cluster_name="never-made"), print
    )

    def never(*_: object) -> None:
        raise AssertionError("nothing may start")

    monkeypatch.setattr(LocalProvider, "up", never)
    with pytest.raises(ManifestError, match="cannot run custom services"):
        session.start()
    session.remove_run_dir()


def test_a_fault_proxy_on_the_local_cluster_is_refused_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from testenv_harness.dataplane import runners
    from testenv_harness.ground.errors import ManifestError
    from testenv_harness.run.options import RunOptions
    from testenv_harness.run.session import RunSession

    assert runners.cannot_proxy([{"name": "r", "type": "redis", "faultProxy": False}]) == ""
    services = [{"name": "r", "type": "redis"}, {"name": "cache", "type": "redis", "faultProxy": True}]
    reason = runners.cannot_proxy(services)
    assert "fault proxy in front of cache (faultProxy: true)" in reason
    assert "--testenv-cluster kind" in reason
    assert "existing" in reason
    manifest = {"kind": "TestEnvironment", "spec": {"services": services}}
    session = RunSession(
        RunOptions(workers=1, manifest=manifest, provider="local", cluster_name="never-made"), print
    )

    def never(*_: object) -> None:
        raise AssertionError("nothing may start")

    monkeypatch.setattr(LocalProvider, "up", never)
    with pytest.raises(ManifestError, match="cannot put a fault proxy in front of cache"):
        session.start()
    session.remove_run_dir()


def test_the_aws_types_name_the_extra_that_installs_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from testenv_harness.dataplane import runners

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "moto" else real(name))
    assert "pip install 'kube-testenv[aws]'" in runners.cannot_serve(["redis", "localstack"])
