"""Operator crashes and leftovers: these tests start (and kill) their own operator processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from testenv_api import (
    LABEL_MANAGED_BY,
    LABEL_OWNER_NAME,
    LABEL_OWNER_NAMESPACE,
    LABEL_OWNER_UID,
    MANAGED_BY,
    Phase,
)
from testenv_harness.clusters import Cluster
from testenv_harness.operator_process import OperatorProcess
from testenv_harness.waiting import wait_for

from . import environments as te

pytestmark = pytest.mark.usefixtures("crd")


@pytest.fixture
def operators(local_cluster: Cluster, tmp_path: Path) -> Iterator[list[OperatorProcess]]:
    started: list[OperatorProcess] = []
    yield started
    for process in started:
        process.stop()


def _start(
    cluster: Cluster, tmp_path: Path, started: list[OperatorProcess], **settings: str
) -> OperatorProcess:
    process = OperatorProcess(
        cluster.kubeconfig, tmp_path / f"operator-{len(started)}.log", **te.OPERATOR_SETTINGS, **settings
    ).start()
    started.append(process)
    return process


def test_killed_mid_provisioning_converges_after_restart(
    api: client.ApiClient,
    tenant: str,
    local_cluster: Cluster,
    tmp_path: Path,
    operators: list[OperatorProcess],
) -> None:
    first = _start(local_cluster, tmp_path, operators)
    uid = te.create(api, tenant, te.manifest("crash", workers=16))["metadata"]["uid"]
    wait_for(lambda: te.owned_namespaces(api, uid), timeout=30, what="provisioning to start")
    first.kill()
    made = len(te.owned_namespaces(api, uid))
    _start(local_cluster, tmp_path, operators)
    te.wait_phase(api, tenant, "crash", Phase.READY, timeout=120, readyWorkers=16)
    assert len(te.owned_namespaces(api, uid)) == 16
    assert made >= 1
    te.delete(api, tenant, "crash")  # while this test's operator still runs
    assert te.owned_namespaces(api, uid) == []


def test_orphaned_namespaces_are_swept_and_foreign_ones_are_not(
    api: client.ApiClient, local_cluster: Cluster, tmp_path: Path, operators: list[OperatorProcess]
) -> None:
    core = client.CoreV1Api(api)
    orphan_labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_OWNER_UID: "00000000-dead-beef-0000-000000000000",
        LABEL_OWNER_NAME: "long-gone",
        LABEL_OWNER_NAMESPACE: "default",
    }
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name="te-orphan-w0", labels=orphan_labels))
    )
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name="not-ours", labels={"team": "x"}))
    )
    # A live owner whose name label does not match its name (as a truncated one would not): the
    # sweep must judge by UID and keep it.
    live = te.create(api, "default", te.manifest("live-owner", workers=1))
    mislabelled = {**orphan_labels, LABEL_OWNER_UID: live["metadata"]["uid"], LABEL_OWNER_NAME: "live-own"}
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name="te-mislabelled-w9", labels=mislabelled))
    )
    try:
        _start(local_cluster, tmp_path, operators, TESTENV_SWEEP_SECONDS="1")

        def swept() -> bool:
            try:
                return core.read_namespace("te-orphan-w0").metadata.deletion_timestamp is not None
            except ApiException as exc:
                return exc.status == 404

        assert wait_for(swept, timeout=30, what="the orphan to be deleted")
        assert core.read_namespace("not-ours").metadata.deletion_timestamp is None
        assert core.read_namespace("te-mislabelled-w9").metadata.deletion_timestamp is None
    finally:
        core.delete_namespace("not-ours")
        core.delete_namespace("te-mislabelled-w9")
        te.delete(api, "default", "live-owner")
