"""The shared-CI-cluster path for real: the operator image in kind, installed by the Helm chart,
running as a pod under the chart's ServiceAccount. A pipeline holding only the chart's pipeline
role runs the example suite from outside the cluster (its token kubeconfig, port-forwards, a warm
pool of real pods) and from inside it (a Job with its mounted token, direct connections); another
tenant cannot use its workers; uninstall leaves nothing behind."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from testenv_api import (
    GROUP,
    LABEL_OWNER_NAMESPACE,
    LABEL_RUNNER,
    PLURAL,
    POOL_KIND,
    POOL_PLURAL,
    VERSION,
    Phase,
)
from testenv_api.status import workers_from_status
from testenv_harness.ground import kube
from testenv_harness.ground.waiting import wait_for
from testenv_harness.provision import imagebuild
from testenv_harness.provision.clusters import Cluster
from testenv_harness.provision.clusters.kind import KindProvider
from tests.integration import chart_support as chart
from tests.integration import environments as te
from tests.suites import CACHE, EXAMPLES, TESTENV

RBAC_GROUP = "rbac.authorization.k8s.io"
#: What the plugin prints for each worker: the slowest one is the run's time to its first test.
WORKER_READY = re.compile(r"worker \d+ ready in ([\d.]+)s")
SUMMARY = re.compile(r"\b1[01] passed(?:, 1 skipped)? in ([\d.]+)s")  # inside: no forward, no fault test


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """A tenant namespace and its CI identity: a ServiceAccount bound to the pipeline role there,
    as docs/shared-ci-cluster.md tells an admin to, and a kubeconfig holding its token only."""

    namespace: str
    account: str
    kubeconfig: Path

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.account}"


def _operator_values(operator: str) -> dict[str, object]:
    repository, tag = operator.rsplit(":", 1)
    services = imagebuild.service_images()
    return {
        # Never: the image was loaded into the node; a pull would mean it was not.
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "serviceImages": {kind: services[kind] for kind in ("redis", "kafka", "localstack")},
    }


@pytest.fixture(scope="module")
def admin(kind_cluster: Cluster) -> client.ApiClient:
    return kube.api_client(kind_cluster.kubeconfig)


@pytest.fixture(scope="module")
def release(kind_cluster: Cluster, kind_provider: KindProvider, admin: client.ApiClient) -> chart.Release:
    operator = imagebuild.reference("operator")
    services = imagebuild.service_images()
    kind_provider.load_images(
        [operator, imagebuild.reference("runner"), *(services[k] for k in ("redis", "kafka", "localstack"))]
    )
    return chart.install(
        admin, kind_cluster.kubeconfig, "testenv-operator", "testenv-system", _operator_values(operator)
    )


def _pipeline(
    admin: client.ApiClient, kind_cluster: Cluster, release: chart.Release, folder: Path
) -> Pipeline:
    namespace = f"pipeline-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(admin)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "pipeline"}})
    client.RbacAuthorizationV1Api(admin).create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "testenv-pipeline"},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": release.pipeline_role},
            "subjects": [{"kind": "ServiceAccount", "name": "pipeline", "namespace": namespace}],
        },
    )
    kubeconfig = chart.token_kubeconfig(
        admin, kind_cluster.kubeconfig, namespace, "pipeline", folder / f"{namespace}.kubeconfig"
    )
    return Pipeline(namespace, "pipeline", kubeconfig)


@pytest.fixture(scope="module")
def pipeline(
    admin: client.ApiClient,
    kind_cluster: Cluster,
    release: chart.Release,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pipeline]:
    made = _pipeline(admin, kind_cluster, release, tmp_path_factory.mktemp("pipeline"))
    yield made
    _drain_pool(admin, made.namespace)  # while the operator runs: its finalizer deletes the free workers
    te.delete_all(admin, made.namespace)
    client.CoreV1Api(admin).delete_namespace(made.namespace)


@pytest.fixture(scope="module")
def example_services() -> list[dict[str, Any]]:
    services: list[dict[str, Any]] = yaml.safe_load((EXAMPLES / "testenvironment.yaml").read_text())["spec"][
        "services"
    ]
    return services


def test_the_chart_runs_the_operator_as_a_pod(admin: client.ApiClient, release: chart.Release) -> None:
    (pod,) = (
        client.CoreV1Api(admin)
        .list_namespaced_pod(release.namespace, label_selector=f"app.kubernetes.io/instance={release.name}")
        .items
    )
    assert pod.spec.service_account_name == release.service_account
    (status,) = pod.status.container_statuses
    assert status.ready, status.state
    assert status.image_id, "a real container, started from a real image"


def test_a_pipeline_runs_the_example_suite_from_outside_with_its_token_alone(
    admin: client.ApiClient,
    pipeline: Pipeline,
    example_services: list[dict[str, Any]],
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a CI job outside the cluster has: a kubeconfig with the pipeline's token, naming its
    namespace. No --testenv-namespace, no spec.access, no admin: the run finds out who it is."""
    # A warm pool of the example's services: the suite's environment claims its two Ready
    # workers (real brokers, started before the run) and forwards the pool's ports.
    _fill_pool(admin, pipeline.namespace, example_services)
    shutil.copy(EXAMPLES / "testenvironment.yaml", pytester.path / "testenvironment.yaml")
    for test in (EXAMPLES / "suite").glob("test_*.py"):
        shutil.copy(test, pytester.path / test.name)
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_manifest = testenvironment.yaml\n")
    monkeypatch.setenv("KUBE_TESTENV_CACHE", CACHE)  # pytester points HOME elsewhere
    monkeypatch.setenv("KUBECONFIG", str(pipeline.kubeconfig))
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--testenv-cluster=existing",
        "--testenv-timeout=240",
        "--testenv-wait-teardown",
        "-n",
        "2",
        timeout=900,
    )
    result.assert_outcomes(passed=11)
    output = result.stdout.str()
    assert f"ServiceAccount {pipeline.namespace}/pipeline may use its workers" in output
    result.stdout.fnmatch_lines(["*2/2 workers ready*torn down in *all namespaces deleted*"])
    _report("outside the cluster, port-forwards", output)
    events = client.CoreV1Api(admin).list_namespaced_event(pipeline.namespace).items
    claims = [e.message for e in events if e.reason == "Claimed"]
    assert "claimed ready pooled workers [0, 1]" in claims, claims


def test_the_same_identity_drives_testenv_run(
    admin: client.ApiClient, pipeline: Pipeline, example_services: list[dict[str, Any]], tmp_path: Path
) -> None:
    """`testenv run` for other runners, with the same token kubeconfig: the command gets every
    worker's forwarded endpoints and restarts one worker's Redis while the other keeps its data."""
    _wait_pool_ready(admin, pipeline.namespace)
    check = tmp_path / "check.py"
    check.write_text(
        "import os, subprocess, redis\n"
        "one, two = (redis.Redis.from_url(os.environ[f'REDIS_URL_{n}']) for n in (0, 1))\n"
        "one.set('k', 'one'); two.set('k', 'two')\n"
        "subprocess.run(['testenv', 'restart', 'redis', '--worker', '0'], check=True)\n"
        "assert redis.Redis.from_url(os.environ['REDIS_URL_0']).get('k') is None, 'a fresh Redis'\n"
        "assert two.get('k') == b'two', 'the other worker never noticed'\n"
        "print('checked', os.environ['TESTENV_WORKERS'], 'workers')\n"
    )
    environment = {**os.environ, "KUBECONFIG": str(pipeline.kubeconfig), "KUBE_TESTENV_CACHE": CACHE}
    done = subprocess.run(
        [
            *TESTENV,
            "run",
            "-f",
            str(EXAMPLES / "testenvironment.yaml"),
            "--workers",
            "2",
            "--cluster",
            "existing",
            "--timeout",
            "240",
            "--wait-teardown",
            "--",
            sys.executable,
            str(check),
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "checked 2 workers" in done.stdout, done.stdout


def test_a_pipeline_job_inside_the_cluster_connects_directly(
    admin: client.ApiClient, pipeline: Pipeline, example_services: list[dict[str, Any]]
) -> None:
    """A CI runner pod (GitLab's Kubernetes executor, ARC, Tekton): the runner image, the pipeline's
    ServiceAccount with its mounted token, no kubeconfig. It connects to the Services' DNS names."""
    _wait_pool_ready(admin, pipeline.namespace)
    name = f"suite-{uuid.uuid4().hex[:6]}"
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 600,
            "template": {
                # The worker namespaces' NetworkPolicy admits this label from this namespace only.
                "metadata": {"labels": {LABEL_RUNNER: "true"}},
                "spec": {
                    "serviceAccountName": pipeline.account,
                    "restartPolicy": "Never",
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
                    "containers": [
                        {
                            "name": "suite",
                            "image": imagebuild.reference("runner"),
                            "imagePullPolicy": "Never",
                            "args": [
                                "pytest",
                                "-n",
                                "2",
                                "-p",
                                "no:cacheprovider",
                                "--testenv-cluster=existing",
                                "--testenv-timeout=240",
                                "--testenv-wait-teardown",
                            ],
                            "resources": {"requests": {"cpu": "200m", "memory": "512Mi"}},
                        }
                    ],
                },
            },
        },
    }
    client.BatchV1Api(admin).create_namespaced_job(pipeline.namespace, job)
    state: dict[str, Any] = {}

    def finished() -> bool:
        nonlocal state
        status = client.BatchV1Api(admin).read_namespaced_job_status(name, pipeline.namespace).status
        state = {"succeeded": status.succeeded, "failed": status.failed}
        return bool(status.succeeded or status.failed)

    wait_for(finished, timeout=900, interval=2, what=f"Job {name} to finish", seen=lambda: str(state))
    (pod,) = (
        client.CoreV1Api(admin)
        .list_namespaced_pod(pipeline.namespace, label_selector=f"job-name={name}")
        .items
    )
    log = client.CoreV1Api(admin).read_namespaced_pod_log(pod.metadata.name, pipeline.namespace)
    assert state["succeeded"], log[-4000:]
    assert "connecting directly to each worker's Services" in log, log[-4000:]
    assert re.search(r"\b10 passed, 1 skipped\b", log), log[-4000:]  # the fault test needs a forward
    _report("inside the cluster, direct", log)


def test_another_tenant_cannot_use_the_first_tenants_workers(
    admin: client.ApiClient,
    kind_cluster: Cluster,
    release: chart.Release,
    pipeline: Pipeline,
    tmp_path: Path,
) -> None:
    other = _pipeline(admin, kind_cluster, release, tmp_path)
    try:
        pipeline_api = kube.api_client(pipeline.kubeconfig)
        manifest = te.manifest(
            "held", workers=1, access={"subjects": [{"kind": "ServiceAccount", "name": "pipeline"}]}
        )
        te.create(pipeline_api, pipeline.namespace, manifest)
        body = te.wait_phase(pipeline_api, pipeline.namespace, "held", Phase.READY, timeout=240)
        (worker,) = workers_from_status(body["status"])
        for verb, resource, subresource in (
            ("create", "pods", "portforward"),
            ("get", "services", ""),
            ("list", "pods", ""),
            ("delete", "pods", ""),
        ):
            assert chart.allowed(
                admin, pipeline.user, verb, resource, worker.namespace, subresource=subresource
            )
            assert not chart.allowed(
                admin, other.user, verb, resource, worker.namespace, subresource=subresource
            )
        # And for real: the other tenant's forward is refused by the API server.
        (pod,) = client.CoreV1Api(admin).list_namespaced_pod(worker.namespace).items
        refusal = chart.port_forward_refusal(
            kube.api_client(other.kubeconfig), worker.namespace, pod.metadata.name, 6379
        )
        assert refusal is not None
        assert "403" in refusal, refusal
        # Its TestEnvironments are out of reach too.
        objects = client.CustomObjectsApi(kube.api_client(other.kubeconfig))
        with pytest.raises(client.ApiException) as denied:
            objects.get_namespaced_custom_object(GROUP, VERSION, pipeline.namespace, PLURAL, "held")
        assert denied.value.status == 403
    finally:
        te.delete_all(admin, pipeline.namespace)
        client.CoreV1Api(admin).delete_namespace(other.namespace)


def test_uninstall_leaves_nothing_behind(
    admin: client.ApiClient, release: chart.Release, pipeline: Pipeline
) -> None:
    _drain_pool(admin, pipeline.namespace)
    te.delete_all(admin, pipeline.namespace)
    release.uninstall()
    owner = f"{LABEL_OWNER_NAMESPACE}={pipeline.namespace}"
    left = {
        kind: [o.metadata.name for o in lister(admin, owner).items]
        for kind, lister in chart.OPERATOR_MADE.items()
    }
    assert left == {kind: [] for kind in chart.OPERATOR_MADE}
    selector = f"app.kubernetes.io/instance={release.name}"
    assert client.RbacAuthorizationV1Api(admin).list_cluster_role(label_selector=selector).items == []
    core = client.CoreV1Api(admin)
    wait_for(
        lambda: not core.list_namespaced_pod(release.namespace, label_selector=selector).items,
        timeout=60,
        what="the operator pod to go",
    )
    core.delete_namespace(release.namespace)


# -- helpers ------------------------------------------------------------------------------------


def _report(where: str, output: str) -> None:
    """Print, for the record, when the run's slowest worker was ready and the run's wall time
    (pytest's own summary: set-up, the 11 tests, and a teardown that waits for the namespaces)."""
    times = [float(t) for t in WORKER_READY.findall(output)]
    slowest = f"{max(times):.1f}s" if times else "not reported"
    wall = SUMMARY.search(output)
    took = f"{wall.group(1)}s" if wall else "not reported"
    print(
        f"\n[kind] example suite -n 2, {where}: slowest worker ready after {slowest}, run {took}", flush=True
    )


def _fill_pool(api: client.ApiClient, namespace: str, services: list[dict[str, Any]]) -> None:
    objects = client.CustomObjectsApi(api)
    pool = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": POOL_KIND,
        "metadata": {"name": "warm"},
        "spec": {"size": 2, "services": services},
    }
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, POOL_PLURAL, pool)
    _wait_pool_ready(api, namespace)


def _wait_pool_ready(api: client.ApiClient, namespace: str) -> None:
    """The pool is full again (after a claim it refills in the background)."""
    objects = client.CustomObjectsApi(api)
    status: dict[str, Any] = {}

    def filled() -> bool:
        nonlocal status
        body = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, POOL_PLURAL, "warm")
        status = body.get("status") or {}
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
