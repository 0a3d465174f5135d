"""The operator, as a real process, against the real API server: the scenarios users rely on."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from testenv_api import (
    ANNOTATION_FAULT_PROXIES,
    ANNOTATION_HEARTBEAT,
    FAULT_PROXY_ADMIN_PORT,
    FAULT_PROXY_LISTEN_BASE,
    LABEL_OWNER_UID,
    LABEL_SHAREABLE,
    LABEL_WORKER,
    ConditionType,
    Phase,
    local_ports,
)
from testenv_api.status import workers_from_status
from testenv_harness.ground.waiting import wait_for
from testenv_harness.provision.clusters import Cluster
from testenv_harness.provision.operator_process import OperatorProcess
from testenv_operator.naming import worker_namespace

from . import environments as te

pytestmark = pytest.mark.usefixtures("running_operator")
REDIS_KAFKA = [{"name": "redis", "type": "redis"}, {"name": "kafka", "type": "kafka"}]


def _deployments(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    return {d.metadata.name: d for d in client.AppsV1Api(api).list_namespaced_deployment(namespace).items}


def _gone(api: client.ApiClient, namespace: str) -> bool:
    try:
        client.CoreV1Api(api).read_namespace(namespace)
    except ApiException as exc:
        return exc.status == 404
    return False


def test_create_reaches_ready_with_full_status(api: client.ApiClient, tenant: str) -> None:
    te.create(api, tenant, te.manifest("full", workers=3, services=REDIS_KAFKA, portBase=22000))
    body = te.wait_phase(api, tenant, "full", Phase.READY, readyWorkers=3)
    workers = workers_from_status(body["status"])
    assert [w.index for w in workers] == [0, 1, 2]
    published = [p.local_port for w in workers for s in w.services for p in s.ports]
    assert published == list(local_ports(body["spec"])) == list(range(22000, 22006))
    conditions = {c["type"]: c["status"] for c in body["status"]["conditions"]}
    assert conditions == {ConditionType.SPEC_VALID: "True", ConditionType.READY: "True"}
    core = client.CoreV1Api(api)
    for worker in workers:
        ns = core.read_namespace(worker.namespace)
        assert ns.metadata.labels[LABEL_OWNER_UID] == body["metadata"]["uid"]
        assert ns.metadata.labels[LABEL_WORKER] == str(worker.index)
        assert set(_deployments(api, worker.namespace)) == {"redis", "kafka"}
        assert {s.metadata.name for s in core.list_namespaced_service(worker.namespace).items} == {
            "redis",
            "kafka",
        }
        assert core.list_namespaced_resource_quota(worker.namespace).items
        assert core.list_namespaced_limit_range(worker.namespace).items
        assert client.NetworkingV1Api(api).list_namespaced_network_policy(worker.namespace).items
        kafka = worker.service("kafka")
        assert kafka.url == f"localhost:{kafka.primary.local_port}"
        env = {
            e.name: e.value
            for e in _deployments(api, worker.namespace)["kafka"].spec.template.spec.containers[0].env
        }
        assert f"EXTERNAL://localhost:{kafka.primary.local_port}" in env["KAFKA_ADVERTISED_LISTENERS"]
    reasons = {e.reason for e in core.list_namespaced_event(tenant).items if e.involved_object.name == "full"}
    assert {"Provisioning", "Ready"} <= reasons


def test_a_fault_proxy_sidecar_is_accepted_by_the_api_server_and_reported(
    api: client.ApiClient, tenant: str
) -> None:
    """What the operator renders for `faultProxy: true` passes the API server's validation and the
    worker's Pod Security level, and the status says where the proxy's API is; a service without the
    field gets the CRD's default (false) and no sidecar."""
    services = [{"name": "cache", "type": "redis", "faultProxy": True}, {"name": "plain", "type": "redis"}]
    te.create(api, tenant, te.manifest("proxied", workers=1, services=services, portBase=22400))
    body = te.wait_phase(api, tenant, "proxied", Phase.READY, readyWorkers=1)
    assert [s.get("faultProxy") for s in body["spec"]["services"]] == [True, False]
    (worker,) = workers_from_status(body["status"])
    cache, plain = worker.service("cache"), worker.service("plain")
    assert (cache.fault_proxy_port, plain.fault_proxy_port) == (FAULT_PROXY_ADMIN_PORT, 0)
    assert cache.primary.port == 6379, "the harness forwards the container's own port"
    deployments = _deployments(api, worker.namespace)
    template = deployments["cache"].spec.template
    assert [c.name for c in template.spec.containers] == ["cache", "toxiproxy"]
    assert ANNOTATION_FAULT_PROXIES in template.metadata.annotations
    assert [c.name for c in deployments["plain"].spec.template.spec.containers] == ["plain"]
    core = client.CoreV1Api(api)
    (port,) = core.read_namespaced_service("cache", worker.namespace).spec.ports
    assert (port.port, port.target_port) == (6379, FAULT_PROXY_LISTEN_BASE)
    (plain_port,) = core.read_namespaced_service("plain", worker.namespace).spec.ports
    assert plain_port.target_port == "redis"


def test_scale_up_and_down(api: client.ApiClient, tenant: str) -> None:
    uid = te.create(api, tenant, te.manifest("scale", workers=2))["metadata"]["uid"]
    te.wait_phase(api, tenant, "scale", Phase.READY, readyWorkers=2)
    te.patch_spec(api, tenant, "scale", {"workers": 4})
    body = te.wait_phase(api, tenant, "scale", Phase.READY, readyWorkers=4)
    assert len(te.owned_namespaces(api, uid)) == 4
    te.patch_spec(api, tenant, "scale", {"workers": 1})
    te.wait_phase(api, tenant, "scale", Phase.READY, readyWorkers=1)
    removed = [w.namespace for w in workers_from_status(body["status"])[1:]]
    assert wait_for(
        lambda: all(_gone(api, ns) for ns in removed), timeout=90, what="scaled-down namespaces to go"
    )
    assert [n.metadata.name for n in te.owned_namespaces(api, uid)] == [
        worker_namespace(tenant, "scale", uid, 0)
    ]


def test_service_added_removed_and_image_rolled_out(api: client.ApiClient, tenant: str) -> None:
    te.create(api, tenant, te.manifest("change", workers=2))
    body = te.wait_phase(api, tenant, "change", Phase.READY)
    namespaces = [w.namespace for w in workers_from_status(body["status"])]

    te.patch_spec(
        api,
        tenant,
        "change",
        {"services": [{"name": "redis", "type": "redis"}, {"name": "mq", "type": "rabbitmq"}]},
    )
    body = te.wait_phase(api, tenant, "change", Phase.READY, readyWorkers=2)
    assert [s.name for s in workers_from_status(body["status"])[0].services] == ["redis", "mq"]
    for ns in namespaces:
        assert set(_deployments(api, ns)) == {"redis", "mq"}

    te.patch_spec(
        api,
        tenant,
        "change",
        {"services": [{"name": "redis", "type": "redis", "image": "valkey/valkey:8.1"}]},
    )
    te.wait_phase(api, tenant, "change", Phase.READY, readyWorkers=2)
    for ns in namespaces:
        assert wait_for(
            lambda ns=ns: set(_deployments(api, ns)) == {"redis"}, timeout=30, what=f"mq removed from {ns}"
        )
        image = _deployments(api, ns)["redis"].spec.template.spec.containers[0].image
        assert image == "valkey/valkey:8.1"


def test_objects_deleted_by_hand_are_recreated(api: client.ApiClient, tenant: str) -> None:
    te.create(api, tenant, te.manifest("heal", workers=2))
    body = te.wait_phase(api, tenant, "heal", Phase.READY)
    first, second = (w.namespace for w in workers_from_status(body["status"]))
    client.AppsV1Api(api).delete_namespaced_deployment("redis", second)
    client.CoreV1Api(api).delete_namespaced_resource_quota("testenv-worker", second)
    client.CoreV1Api(api).delete_namespace(first)
    wait_for(
        lambda: "redis" in _deployments(api, second), timeout=30, what="the deleted Deployment to come back"
    )
    wait_for(
        lambda: client.CoreV1Api(api).list_namespaced_resource_quota(second).items,
        timeout=30,
        what="the quota to come back",
    )

    def recreated() -> bool:
        try:
            ns = client.CoreV1Api(api).read_namespace(first)
        except ApiException:
            return False
        return ns.metadata.deletion_timestamp is None and "redis" in _deployments(api, first)

    assert wait_for(recreated, timeout=120, what="the deleted namespace to be recreated")
    te.wait_phase(api, tenant, "heal", Phase.READY, readyWorkers=2)


def test_deletion_removes_every_namespace_before_the_object_goes(api: client.ApiClient, tenant: str) -> None:
    uid = te.create(api, tenant, te.manifest("bye", workers=3))["metadata"]["uid"]
    te.wait_phase(api, tenant, "bye", Phase.READY)
    te.delete(api, tenant, "bye")
    assert te.owned_namespaces(api, uid) == [], "no namespace may be left, not even Terminating"


def _events(api: client.ApiClient, namespace: str, name: str, reason: str) -> list[Any]:
    listed = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name},reason={reason}"
    )
    return list(listed.items)


def test_foreign_namespace_is_reported_and_left_alone(
    api: client.ApiClient,
    tenant: str,
    local_cluster: Cluster,
    tmp_path: Path,
    running_operator: OperatorProcess,
) -> None:
    running_operator.stop()  # create the object while nobody reconciles, to learn its UID first
    try:
        uid = te.create(api, tenant, te.manifest("clash", workers=2))["metadata"]["uid"]
        taken = worker_namespace(tenant, "clash", uid, 0)
        core = client.CoreV1Api(api)
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=taken, labels={"team": "other"}))
        )
    finally:
        running_operator.start()
    try:
        body = te.wait_phase(api, tenant, "clash", Phase.FAILED)
        assert taken in body["status"]["message"]
        assert "not owned by this TestEnvironment" in body["status"]["message"]
        (ok,) = [w for w in workers_from_status(body["status"]) if w.index == 1]
        assert wait_for(
            lambda: te.get(api, tenant, "clash")["status"]["readyWorkers"] == 1,
            timeout=60,
            what="worker 1 ready",
        )
        # Said once, however many passes see the conflict again (one every resync here).
        wait_for(lambda: _events(api, tenant, "clash", "NamespaceConflict"), timeout=30, what="the event")
        time.sleep(3 * float(te.OPERATOR_SETTINGS["TESTENV_RESYNC_SECONDS"]))
        assert len(_events(api, tenant, "clash", "NamespaceConflict")) == 1
        te.delete(api, tenant, "clash")
        ns = core.read_namespace(taken)
        assert ns.metadata.deletion_timestamp is None
        assert ns.metadata.labels == {"team": "other", "kubernetes.io/metadata.name": taken}
        assert _deployments(api, taken) == {}
        assert ok.namespace != taken
    finally:
        core.delete_namespace(taken)


#: (spec changes, the field SpecValid=False must name): specs the CRD admits and the operator refuses.
INVALID_SPECS: list[tuple[dict[str, Any], str]] = [
    ({"workers": te.MAX_WORKERS_UNDER_TEST + 1}, "spec.workers"),
    (
        {
            "services": [
                {
                    "name": "api",
                    "type": "custom",
                    "custom": {"image": "Not A/Ref", "ports": [{"name": "h", "port": 80}]},
                }
            ]
        },
        "spec.services[0].custom.image",
    ),
    (
        {
            "services": [
                {
                    "name": "api",
                    "type": "custom",
                    "custom": {
                        "image": "a/b:1",
                        "ports": [{"name": "h", "port": 80}, {"name": "i", "port": 80}],
                    },
                }
            ]
        },
        "spec.services[0].custom.ports",
    ),
    (
        {"services": [{"name": "k", "type": "kafka", "resources": {"limits": {"memory": "64Gi"}}}]},
        "spec.services[*].resources.limits",
    ),
]
INVALID_IDS = ["too many workers", "bad image", "port clash", "quota too small"]


@pytest.mark.parametrize(("spec", "field"), INVALID_SPECS, ids=INVALID_IDS)
def test_invalid_spec_becomes_a_condition_not_a_crash(
    api: client.ApiClient, tenant: str, running_operator: OperatorProcess, spec: dict[str, Any], field: str
) -> None:
    name = f"bad-{uuid.uuid4().hex[:4]}"
    body = te.manifest(name)
    body["spec"].update(spec)
    te.create(api, tenant, body)
    failed = te.wait_phase(api, tenant, name, Phase.FAILED)
    spec_valid = next(c for c in failed["status"]["conditions"] if c["type"] == ConditionType.SPEC_VALID)
    assert spec_valid["status"] == "False"
    assert spec_valid["reason"] == "SpecInvalid"
    assert field in spec_valid["message"]
    assert running_operator.healthy()
    te.create(api, tenant, te.manifest("neighbour", workers=1))
    te.wait_phase(api, tenant, "neighbour", Phase.READY)


def test_missing_secret_waits_then_provisions(api: client.ApiClient, tenant: str) -> None:
    services = [
        {
            "name": "aws",
            "type": "localstack",
            "localstack": {"authTokenSecretRef": {"name": "ls", "key": "token"}},
        }
    ]
    te.create(api, tenant, te.manifest("token", workers=1, services=services))
    pending = te.wait_phase(api, tenant, "token", Phase.PENDING)
    assert "Secret 'ls'" in pending["status"]["message"]
    shared = client.V1ObjectMeta(name="ls", labels={LABEL_SHAREABLE: "true"})
    client.CoreV1Api(api).create_namespaced_secret(
        tenant, client.V1Secret(metadata=shared, string_data={"token": "t0k3n"})
    )
    body = te.wait_phase(api, tenant, "token", Phase.READY)
    ns = workers_from_status(body["status"])[0].namespace
    copied = client.CoreV1Api(api).read_namespaced_secret("ls", ns)
    assert copied.metadata.labels[LABEL_OWNER_UID] == body["metadata"]["uid"]


def test_stale_heartbeat_expires_the_environment(api: client.ApiClient, tenant: str) -> None:
    body = te.manifest("stale", workers=1, lifetime={"ttlSeconds": 3600, "heartbeatTimeoutSeconds": 30})
    body["metadata"]["annotations"] = {ANNOTATION_HEARTBEAT: "2020-01-01T00:00:00Z"}
    uid = te.create(api, tenant, body)["metadata"]["uid"]

    def deleted() -> bool:
        try:
            te.get(api, tenant, "stale")
        except ApiException as exc:
            return exc.status == 404
        return False

    assert wait_for(deleted, timeout=60, what="the expired environment to delete itself")
    assert te.owned_namespaces(api, uid) == []
    reasons = {e.reason for e in client.CoreV1Api(api).list_namespaced_event(tenant).items}
    assert "Expired" in reasons


def test_an_unreadable_heartbeat_neither_expires_nor_stops_the_environment(
    api: client.ApiClient, tenant: str
) -> None:
    """A heartbeat without a UTC offset is unreadable: the environment is not expired on it, and
    its daemon keeps it converged (it used to crash on every pass, so nothing became Ready)."""
    body = te.manifest("naive", workers=1, lifetime={"ttlSeconds": 3600, "heartbeatTimeoutSeconds": 30})
    body["metadata"]["annotations"] = {ANNOTATION_HEARTBEAT: "2020-01-01T00:00:00"}
    te.create(api, tenant, body)
    ready = te.wait_phase(api, tenant, "naive", Phase.READY, timeout=120)
    (worker,) = workers_from_status(ready["status"])
    client.AppsV1Api(api).delete_namespaced_deployment("redis", worker.namespace)
    wait_for(
        lambda: "redis" in _deployments(api, worker.namespace),
        timeout=30,
        what="the deleted Deployment to come back",
    )
    assert te.get(api, tenant, "naive")["metadata"].get("deletionTimestamp") is None


def test_twenty_environments_at_once_all_reach_ready(api: client.ApiClient, tenant: str) -> None:
    names = [f"many-{i:02d}" for i in range(20)]
    for i, name in enumerate(names):
        te.create(api, tenant, te.manifest(name, workers=2, portBase=30000 + 10 * i))
    for name in names:
        te.wait_phase(api, tenant, name, Phase.READY, timeout=180, readyWorkers=2)


WORKER_ACCESS = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "testenv-worker-access"},
    "rules": [
        {"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["create", "get"]},
    ],
}


def test_access_subjects_reach_their_own_workers_only(
    api: client.ApiClient, tenant: str, local_cluster: Cluster
) -> None:
    rbac = client.RbacAuthorizationV1Api(api)
    try:
        rbac.create_cluster_role(WORKER_ACCESS)
    except ApiException as exc:
        if exc.status != 409:  # another test (or the chart) made it already
            raise
    access = {"subjects": [{"kind": "ServiceAccount", "name": "pipeline-a"}]}
    te.create(api, tenant, te.manifest("mine", workers=1, access=access))
    te.create(api, tenant, te.manifest("theirs", workers=1))
    mine = workers_from_status(te.wait_phase(api, tenant, "mine", Phase.READY)["status"])[0].namespace
    theirs = workers_from_status(te.wait_phase(api, tenant, "theirs", Phase.READY)["status"])[0].namespace

    from testenv_harness.ground import kube

    as_pipeline = kube.api_client(local_cluster.kubeconfig)
    as_pipeline.default_headers["Impersonate-User"] = f"system:serviceaccount:{tenant}:pipeline-a"
    core = client.CoreV1Api(as_pipeline)
    assert wait_for(lambda: _can_list_pods(core, mine), timeout=30, what="the RoleBinding to take effect")
    assert not _can_list_pods(core, theirs)

    te.patch_spec(api, tenant, "mine", {"access": None})
    assert wait_for(lambda: not _can_list_pods(core, mine), timeout=30, what="access to be withdrawn")


def _can_list_pods(core: client.CoreV1Api, namespace: str) -> bool:
    try:
        core.list_namespaced_pod(namespace)
    except ApiException as exc:
        if exc.status == 403:
            return False
        raise
    return True


@pytest.mark.chaos
def test_invalid_environments_at_load_leave_the_valid_ones_ready(
    api: client.ApiClient, tenant: str, other_tenant: str
) -> None:
    """20 invalid TestEnvironments created at the same moment as 20 valid ones (issue 11's bad input
    at load): every valid one is Ready, every invalid one has a condition naming its field."""
    jobs: list[tuple[str, te.Manifest]] = []
    for i in range(20):
        jobs.append((tenant, te.manifest(f"ok-{i:02d}", workers=1, portBase=30000 + 10 * i)))
        spec, _ = INVALID_SPECS[i % len(INVALID_SPECS)]
        bad = te.manifest(f"bad-{i:02d}", workers=1)
        bad["spec"].update(spec)
        jobs.append((other_tenant, bad))
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda job: te.create(api, *job), jobs))

    for i in range(20):
        te.wait_phase(api, tenant, f"ok-{i:02d}", Phase.READY, timeout=180, readyWorkers=1)
    for i in range(20):
        _, field = INVALID_SPECS[i % len(INVALID_SPECS)]
        failed = te.wait_phase(api, other_tenant, f"bad-{i:02d}", Phase.FAILED, timeout=60)
        spec_valid = next(c for c in failed["status"]["conditions"] if c["type"] == ConditionType.SPEC_VALID)
        assert spec_valid["status"] == "False"
        assert field in spec_valid["message"], spec_valid["message"]
