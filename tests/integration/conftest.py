"""A throwaway local cluster (real kube-apiserver, etcd, controller-manager, scheduler) per session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from testenv_harness import kube
from testenv_harness.clusters import Cluster, LocalProvider

CLUSTER_NAME = "testenv-it"


@pytest.fixture(scope="session")
def local_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")

    def report(line: str) -> None:
        if reporter is not None:
            reporter.write_line(f"[cluster] {line}")

    provider = LocalProvider(CLUSTER_NAME, report=report)
    cluster = provider.up()
    yield cluster
    if not request.config.getoption("--keep-cluster"):
        provider.down()


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
