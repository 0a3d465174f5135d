"""The shared-CI-cluster path for real: the operator image in kind, installed by the Helm chart,
running as a pod under the chart's ServiceAccount, serving the example suite from a warm pool of
real pods; uninstall leaves nothing behind."""

from __future__ import annotations

import shutil
import uuid
from typing import Any

import pytest
import yaml
from kubernetes import client

from testenv_api import GROUP, LABEL_OWNER_NAMESPACE, POOL_KIND, POOL_PLURAL, VERSION
from testenv_harness import imagebuild, kube
from testenv_harness.clusters import Cluster
from testenv_harness.clusters.kind import KindProvider
from testenv_harness.waiting import wait_for
from tests.integration import chart_support as chart
from tests.suites import CACHE, EXAMPLES


def _operator_values(operator: str) -> dict[str, object]:
    repository, tag = operator.rsplit(":", 1)
    services = imagebuild.service_images()
    return {
        # Never: the image was loaded into the node; a pull would mean it was not.
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "serviceImages": {kind: services[kind] for kind in ("redis", "kafka", "localstack")},
    }


def test_the_helm_installed_operator_serves_the_example_suite(
    kind_cluster: Cluster,
    kind_provider: KindProvider,
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", CACHE)  # pytester points HOME elsewhere
    api = kube.api_client(kind_cluster.kubeconfig)
    core = client.CoreV1Api(api)
    operator = imagebuild.reference("operator")
    services = imagebuild.service_images()
    kind_provider.load_images([operator, *(services[k] for k in ("redis", "kafka", "localstack"))])
    release = chart.install(
        api, kind_cluster.kubeconfig, "testenv-operator", "testenv-system", _operator_values(operator)
    )
    tenant = f"pipeline-{uuid.uuid4().hex[:6]}"
    try:
        (pod,) = core.list_namespaced_pod(
            release.namespace, label_selector=f"app.kubernetes.io/instance={release.name}"
        ).items
        assert pod.spec.service_account_name == release.service_account
        (status,) = pod.status.container_statuses
        assert status.ready, status.state
        assert status.image_id, "a real container, started from a real image"

        # A warm pool of the example's services: the suite's environment claims its two Ready
        # workers (real brokers, started before the run) and forwards the pool's ports.
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=tenant)))
        services = yaml.safe_load((EXAMPLES / "testenvironment.yaml").read_text())["spec"]["services"]
        _fill_pool(api, tenant, services)
        shutil.copy(EXAMPLES / "testenvironment.yaml", pytester.path / "testenvironment.yaml")
        for test in (EXAMPLES / "suite").glob("test_*.py"):
            shutil.copy(test, pytester.path / test.name)
        pytester.makeini("[pytest]\ntestenv = true\ntestenv_manifest = testenvironment.yaml\n")
        monkeypatch.setenv("KUBECONFIG", str(kind_cluster.kubeconfig))
        result = pytester.runpytest_subprocess(
            "-p",
            "no:cacheprovider",
            "--testenv-cluster=existing",
            "--testenv-operator=cluster",
            f"--testenv-namespace={tenant}",
            "--testenv-timeout=240",
            "--testenv-wait-teardown",  # the release is uninstalled next: its operator must be done
            "-n",
            "2",
            timeout=900,
        )
        result.assert_outcomes(passed=10)
        result.stdout.fnmatch_lines(["*2/2 workers ready*torn down in *all namespaces deleted*"])
        reasons = {e.reason: e.message for e in core.list_namespaced_event(tenant).items}
        assert reasons.get("Claimed") == "claimed ready pooled workers [0, 1]", reasons
    finally:
        _drain_pool(api, tenant)  # while the operator runs: its finalizer deletes the free workers
        release.uninstall()
        core.delete_namespace(tenant)

    owner = f"{LABEL_OWNER_NAMESPACE}={tenant}"
    left = {
        kind: [o.metadata.name for o in lister(api, owner).items]
        for kind, lister in chart.OPERATOR_MADE.items()
    }
    assert left == {kind: [] for kind in chart.OPERATOR_MADE}
    selector = f"app.kubernetes.io/instance={release.name}"
    assert client.RbacAuthorizationV1Api(api).list_cluster_role(label_selector=selector).items == []
    wait_for(
        lambda: not core.list_namespaced_pod(release.namespace, label_selector=selector).items,
        timeout=60,
        what="the operator pod to go",
    )
    core.delete_namespace(release.namespace)


def _fill_pool(api: client.ApiClient, namespace: str, services: list[dict[str, Any]]) -> None:
    objects = client.CustomObjectsApi(api)
    pool = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": POOL_KIND,
        "metadata": {"name": "warm"},
        "spec": {"size": 2, "services": services},
    }
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, POOL_PLURAL, pool)
    status: dict[str, Any] = {}

    def filled() -> bool:
        nonlocal status
        status = (
            objects.get_namespaced_custom_object(GROUP, VERSION, namespace, POOL_PLURAL, "warm").get("status")
            or {}
        )
        return status.get("phase") == "Ready"

    wait_for(filled, timeout=300, what="the warm pool to be Ready", seen=lambda: f"status {status}")


def _drain_pool(api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(api)
    try:
        objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, POOL_PLURAL, "warm")
    except client.ApiException as exc:
        if exc.status == 404:
            return
        raise

    def gone() -> bool:
        try:
            objects.get_namespaced_custom_object(GROUP, VERSION, namespace, POOL_PLURAL, "warm")
        except client.ApiException as exc:
            return exc.status == 404
        return False

    wait_for(gone, timeout=180, what="the warm pool and its free workers to go")
