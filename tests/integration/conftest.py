"""A throwaway local cluster (real kube-apiserver, etcd, controller-manager, scheduler) per session."""

from __future__ import annotations

import collections
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


#: Tenants whose environments a test's end asked to delete without waiting, by test module: the
#: module's operator (`running_operator`) sees their deletions through before it stops.
_DELETING: dict[str, list[str]] = collections.defaultdict(list)


@pytest.fixture(scope="module")
def running_operator(
    local_cluster: Cluster,
    crd: None,
    api: client.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
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
    for tenant in _DELETING.pop(request.module.__name__, []):
        environments.delete_many(api, tenant, environments.names_in(api, tenant), timeout=180)
    process.stop()


@pytest.fixture
def tenant(api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace for TestEnvironments; its environments are deleted afterwards."""
    yield from _tenant_namespace(api, request)


@pytest.fixture
def other_tenant(api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A second tenant, for tests of one tenant next to another."""
    yield from _tenant_namespace(api, request)


def _tenant_namespace(api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """With the module's operator in the test, which outlives it, the environments' deletion goes
    on during the next tests and the operator waits for it before it stops (a deletion takes at
    least 5 s: the namespace controller's grace); with an operator of the test's own, it is
    waited for here."""
    name = f"tenant-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    later = "running_operator" in request.fixturenames
    if environments.delete_all(api, name, wait=not later) and later:
        _DELETING[request.module.__name__].append(name)
    core.delete_namespace(name)
