"""The example suite on workers claimed from a warm pool (local cluster; tests/kind/test_helm.py
does the same with real pods and the Helm-installed operator)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from testenv_api import LABEL_OWNER_NAMESPACE
from testenv_harness.ground import kube
from testenv_harness.provision.clusters import Cluster
from testenv_harness.provision.operator_process import OperatorProcess
from tests.integration import environments as te

from .conftest import Run

#: While the run holds them, the pool's ports its worker forwards are reserved on this machine.
RESERVED = """
from testenv_harness.ground import files
from testenv_harness.ground.waiting import wait_for


def _reserved():
    blocks = []
    for entry in (files.cache_root() / "port-reservations").glob("*.block"):
        pid, base, count, *_ = (int(x) for x in entry.read_text().split())
        blocks.append(range(base, base + count))
    return blocks


def test_the_pool_ports_this_worker_forwards_are_reserved(testenv):
    ports = [p.local_port for s in testenv.services() for p in s.ports]
    wait_for(
        lambda: all(any(port in block for block in _reserved()) for port in ports),
        timeout=20,
        what=f"ports {ports} to be reserved",
        seen=lambda: str(_reserved()),
    )
"""


@pytest.fixture
def pool_namespace(e2e_cluster: Cluster, tmp_path: Path) -> Iterator[tuple[str, client.ApiClient]]:
    """A namespace, and an operator serving it for the whole test (the pool fills before the run)."""
    api = kube.api_client(e2e_cluster.kubeconfig)
    kube.install_crd(api)
    name = f"pool-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    operator = OperatorProcess(
        e2e_cluster.kubeconfig, tmp_path / "operator.log", TESTENV_NAMESPACES=name
    ).start()
    try:
        yield name, api
        te.delete_all(api, name)
        te.delete_pool(api, name, "warm")
    finally:
        operator.stop()
        core.delete_namespace(name)


def test_the_example_suite_runs_on_claimed_pool_workers(
    run_suite: Run, example_suite: Path, pool_namespace: tuple[str, client.ApiClient]
) -> None:
    namespace, api = pool_namespace
    manifest: dict[str, Any] = yaml.safe_load((example_suite / "testenvironment.yaml").read_text())
    te.create_pool(api, namespace, te.pool_manifest("warm", 2, manifest["spec"]["services"]))
    te.wait_pool(api, namespace, "warm", ready=2, free=2, phase="Ready")

    (example_suite / "test_reserved.py").write_text(RESERVED)
    result = run_suite(
        "-n", "2", f"--testenv-namespace={namespace}", "--testenv-operator=cluster", "--testenv-wait-teardown"
    )
    result.assert_outcomes(passed=12)
    events = client.CoreV1Api(api).list_namespaced_event(namespace).items
    assert "claimed ready pooled workers [0, 1]" in {e.message for e in events if e.reason == "Claimed"}
    # The claimed workers went with the run; the pool made two new ones meanwhile.
    pool = te.wait_pool(api, namespace, "warm", ready=2, free=2, claimed=0)
    owned = client.CoreV1Api(api).list_namespace(label_selector=f"{LABEL_OWNER_NAMESPACE}={namespace}").items
    live = [ns for ns in owned if not ns.metadata.deletion_timestamp]
    assert len(live) == 2, [ns.metadata.name for ns in live]
    assert pool["status"]["phase"] == "Ready"
