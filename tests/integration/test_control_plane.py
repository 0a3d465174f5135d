"""The local cluster behaves like a real one: pinned version, controllers, scheduler, RBAC."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from testenv_harness.ground.waiting import wait_for
from testenv_harness.provision import toolchain
from testenv_harness.provision.clusters import Cluster
from tests.e2e import outages


def test_server_reports_the_pinned_version(api: client.ApiClient, local_cluster: Cluster) -> None:
    assert client.VersionApi(api).get_code().git_version == toolchain.KUBERNETES_VERSION
    out = subprocess.run(
        [
            str(toolchain.binary("kubectl")),
            "--kubeconfig",
            str(local_cluster.kubeconfig),
            f"--cache-dir={toolchain.kube_cache_dir()}",  # not ~/.kube/cache
            "version",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    versions = json.loads(out)
    assert versions["serverVersion"]["gitVersion"] == toolchain.KUBERNETES_VERSION
    assert versions["clientVersion"]["gitVersion"] == toolchain.KUBERNETES_VERSION


def _deployment(name: str, replicas: int) -> client.V1Deployment:
    labels = {"app": name}
    container = client.V1Container(name="app", image="registry.example/app:1")
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels), spec=client.V1PodSpec(containers=[container])
            ),
        ),
    )


def test_a_deployment_gets_scheduled_ready_pods(api: client.ApiClient, namespace: str) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(namespace, _deployment("web", 3))

    def ready() -> int:
        return apps.read_namespaced_deployment("web", namespace).status.ready_replicas or 0

    assert wait_for(lambda: ready() == 3, timeout=60, what="3 ready replicas")
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 3
    for pod in pods:
        assert pod.spec.node_name.startswith("kwok-node-"), "the scheduler placed the pod on a kwok node"
        assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"


def test_controllers_outlive_an_etcd_outage_longer_than_a_lease(
    api: client.ApiClient, local_cluster: Cluster, namespace: str
) -> None:
    """etcd down for 12 s, longer than a leader-elected kube-controller-manager or kube-scheduler
    keeps going without renewing its Lease (10 s, then it exits): the local cluster runs both
    without leader election, so both outlive it, and a Deployment made afterwards gets ready pods."""
    cluster_dir = local_cluster.kubeconfig.parent
    names = ("kube-controller-manager", "kube-scheduler")
    controllers = {name: outages.pid_of(cluster_dir, name) for name in names}
    outages.restart(cluster_dir, "etcd", down_seconds=12)
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    wait_for(
        lambda: core.read_namespace(namespace, _request_timeout=5) is not None,
        timeout=60,
        what="the API server to answer after etcd's restart",
        retry=(ApiException, urllib3.exceptions.HTTPError),
    )
    assert [name for name, pid in controllers.items() if outages.is_gone(pid)] == []
    apps.create_namespaced_deployment(namespace, _deployment("after", 2))
    wait_for(
        lambda: (apps.read_namespaced_deployment("after", namespace).status.ready_replicas or 0) == 2,
        timeout=60,
        what="2 ready replicas of a Deployment made after the outage",
    )


def test_a_deleted_namespace_really_goes_away(api: client.ApiClient) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    name = f"it-gone-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    apps.create_namespaced_deployment(name, _deployment("web", 2))
    core.create_namespaced_config_map(name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c")))
    wait_for(lambda: len(core.list_namespaced_pod(name).items) == 2, timeout=60, what="pods to exist")
    core.delete_namespace(name)

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as exc:
            return exc.status == 404
        return False

    assert wait_for(gone, timeout=90, what=f"namespace {name} to be deleted by the namespace controller")


def test_authorization_is_enforced(local_cluster: Cluster, namespace: str) -> None:
    from testenv_harness.ground import kube

    api = kube.api_client(local_cluster.kubeconfig)
    api.default_headers["Impersonate-User"] = f"system:serviceaccount:{namespace}:nobody"
    with pytest.raises(ApiException) as refused:
        client.CoreV1Api(api).list_namespaced_pod(namespace)
    assert refused.value.status == 403
