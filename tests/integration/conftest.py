"""A throwaway local cluster (real kube-apiserver, etcd, controller-manager, scheduler) per session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from testenv_harness.ground import kube
from testenv_harness.provision.clusters import Cluster
from testenv_harness.provision.operator_process import OperatorProcess

from . import environments


@pytest.fixture(scope="session")
def api(local_cluster: Cluster) -> client.ApiClient:
    return kube.api_client(local_cluster.kubeconfig)


@pytest.fixture(scope="session")
def crd(api: client.ApiClient) -> None:
    kube.install_crd(api)


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"it-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="module")
def running_operator(
    local_cluster: Cluster, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """One operator process for a module's tests (tests that kill it start their own)."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    process = OperatorProcess(
        local_cluster.kubeconfig,
        log,
        **environments.OPERATOR_SETTINGS,
        TESTENV_MAX_WORKERS=str(environments.MAX_WORKERS_UNDER_TEST),
    ).start()
    yield process
    process.stop()


@pytest.fixture
def tenant(api: client.ApiClient) -> Iterator[str]:
    """A namespace for TestEnvironments; its environments are deleted (and awaited) afterwards."""
    yield from _tenant_namespace(api)


@pytest.fixture
def other_tenant(api: client.ApiClient) -> Iterator[str]:
    """A second tenant, for tests of one tenant next to another."""
    yield from _tenant_namespace(api)


def _tenant_namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"tenant-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    environments.delete_all(api, name)
    core.delete_namespace(name)
