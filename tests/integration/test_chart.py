"""The Helm chart on the real API server: install, the operator under the chart's own identity,
tenant isolation, a namespaced release and a clean uninstall.

kwok only simulates the chart's pod, so the operator itself runs as a local process
(OperatorProcess). It authenticates with a TokenRequest token of the chart's ServiceAccount and
gets the TESTENV_* settings the chart gave the Deployment: the RBAC rules and values under test
are the chart's, enforced by the real API server. Pipelines are ServiceAccounts with tokens too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from testenv_api import (
    ANNOTATION_HEARTBEAT,
    CRD_NAME,
    FINALIZER,
    GROUP,
    LABEL_MANAGED_BY,
    LABEL_OWNER_NAME,
    LABEL_OWNER_NAMESPACE,
    LABEL_OWNER_UID,
    LABEL_SHAREABLE,
    MANAGED_BY,
    PLURAL,
    VERSION,
    Phase,
    primary_port,
)
from testenv_api.status import workers_from_status
from testenv_harness.ground.errors import AccessError
from testenv_harness.ground.localports import free_port
from testenv_harness.ground.waiting import wait_for
from testenv_harness.provision import toolchain
from testenv_harness.provision.clusters import Cluster
from testenv_harness.provision.operator_process import OperatorProcess
from testenv_harness.run.options import RunOptions
from testenv_harness.run.session import RunSession
from testenv_harness.worker.connection import FORWARD_RIGHTS
from testenv_harness.worker.handoff import Handoff
from testenv_harness.worker.testenv import TestEnv
from tests.suites import TESTENV

from . import chart_support as chart
from . import environments as te

RELEASE = "testenv-operator"
SYSTEM_NAMESPACE = "testenv-system"
#: Short loops so the scenario also drives the resync and the orphan sweep within seconds.
FAST = {"resyncSeconds": 2, "orphanSweepSeconds": 2}
RBAC_GROUP = "rbac.authorization.k8s.io"
#: What the operator logs when the API server refuses it something.
PERMISSION_TROUBLE = re.compile(
    r"forbidden|\b403\b|not enough permissions|orphan sweep failed", re.IGNORECASE
)
#: The cause the API server gives for a write into a namespace being deleted.
NAMESPACE_GOING = "NamespaceTerminating"


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def release(local_cluster: Cluster, api: client.ApiClient) -> Iterator[chart.Release]:
    installed = chart.install(api, local_cluster.kubeconfig, RELEASE, SYSTEM_NAMESPACE, FAST)
    yield installed
    installed.uninstall()
    client.CoreV1Api(api).delete_namespace(SYSTEM_NAMESPACE)


def _start_operator(api: client.ApiClient, release: chart.Release, folder: Path) -> OperatorProcess:
    """The operator as the release's ServiceAccount, with the release's settings."""
    kubeconfig = chart.token_kubeconfig(
        api, release.kubeconfig, release.namespace, release.service_account, folder / "operator.kubeconfig"
    )
    return OperatorProcess(kubeconfig, folder / "operator.log", **release.operator_env(api)).start()


@pytest.fixture(scope="module")
def chart_operator(
    api: client.ApiClient, release: chart.Release, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    process = _start_operator(api, release, tmp_path_factory.mktemp("chart-operator"))
    yield process
    process.stop()


def _permission_trouble(process: OperatorProcess) -> list[str]:
    """Refusals in the operator's log, less the API server's 403 for writes into a namespace
    being deleted (an Event on an environment whose namespace goes): no RBAC rule is missing."""
    lines = process.log.read_text().splitlines()
    return [line for line in lines if PERMISSION_TROUBLE.search(line) and NAMESPACE_GOING not in line]


@dataclasses.dataclass(frozen=True)
class Team:
    """A pipeline: a namespace and a ServiceAccount in it, with a client that uses its token."""

    namespace: str
    account: str
    api: client.ApiClient
    kubeconfig: Path

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.account}"

    @property
    def access(self) -> dict[str, Any]:
        return {"subjects": [{"kind": "ServiceAccount", "name": self.account}]}


@pytest.fixture
def teams(
    api: client.ApiClient,
    local_cluster: Cluster,
    release: chart.Release,
    chart_operator: OperatorProcess,
    tmp_path: Path,
) -> Iterator[Callable[..., Team]]:
    """Makes pipelines; bound=True binds the release's pipeline role in the pipeline's namespace,
    as docs/shared-ci-cluster.md tells an admin to. Their environments are deleted afterwards,
    while the operator still runs."""
    core = client.CoreV1Api(api)
    made: list[str] = []

    def make(label: str, bound: bool = True) -> Team:
        namespace = f"team-{label}-{uuid.uuid4().hex[:6]}"
        core.create_namespace({"metadata": {"name": namespace}})
        made.append(namespace)
        core.create_namespaced_service_account(namespace, {"metadata": {"name": "pipeline"}})
        user = f"system:serviceaccount:{namespace}:pipeline"
        if bound:
            client.RbacAuthorizationV1Api(api).create_namespaced_role_binding(
                namespace,
                {
                    "metadata": {"name": "testenv-pipeline"},
                    "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": release.pipeline_role},
                    "subjects": [{"kind": "ServiceAccount", "name": "pipeline", "namespace": namespace}],
                },
            )
            wait_for(
                lambda: chart.allowed(api, user, "create", PLURAL, namespace, group=GROUP),
                timeout=10,
                what="the pipeline RoleBinding to take effect",
            )
        kubeconfig = chart.token_kubeconfig(
            api, local_cluster.kubeconfig, namespace, "pipeline", tmp_path / f"{namespace}.kubeconfig"
        )
        return Team(namespace, "pipeline", chart.client_for(kubeconfig), kubeconfig)

    yield make
    for namespace in made:
        te.delete_all(api, namespace)
        core.delete_namespace(namespace)


# -- helpers ------------------------------------------------------------------------------------


def _deployments(api: client.ApiClient, namespace: str) -> set[str]:
    return {d.metadata.name for d in client.AppsV1Api(api).list_namespaced_deployment(namespace).items}


def _services(api: client.ApiClient, namespace: str) -> set[str]:
    return {s.metadata.name for s in client.CoreV1Api(api).list_namespaced_service(namespace).items}


def _role_bindings(api: client.ApiClient, namespace: str) -> set[str]:
    items = client.RbacAuthorizationV1Api(api).list_namespaced_role_binding(namespace).items
    return {b.metadata.name for b in items}


def _namespace_gone(api: client.ApiClient, name: str) -> bool:
    try:
        client.CoreV1Api(api).read_namespace(name)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def _environment_gone(api: client.ApiClient, namespace: str, name: str) -> bool:
    try:
        te.get(api, namespace, name)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def _notes_manifest(notes: str, account: str) -> dict[str, Any]:
    """The TestEnvironment NOTES.txt tells a user to apply, with their ServiceAccount filled in."""
    heredoc = notes.split("<<'YAML'\n", 1)[1].split("\nYAML\n", 1)[0]
    manifest: dict[str, Any] = yaml.safe_load(heredoc.replace("YOUR-PIPELINE-SA", account))
    return manifest


def _worker_pod(api: client.ApiClient, team: Team, name: str) -> tuple[str, str]:
    body = te.wait_phase(team.api, team.namespace, name, Phase.READY)
    namespace = workers_from_status(body["status"])[0].namespace
    (pod,) = client.CoreV1Api(api).list_namespaced_pod(namespace).items
    return namespace, pod.metadata.name


def _assert_fenced(api: client.ApiClient, namespace: str) -> None:
    """What the operator made in a worker namespace holds its pods in (issue 13, medium 4 and 5)."""
    policy = client.NetworkingV1Api(api).read_namespaced_network_policy(
        "testenv-same-namespace-only", namespace
    )
    assert policy.spec.policy_types == ["Ingress", "Egress"]
    peers = [peer.to_dict() for rule in policy.spec.egress for peer in rule.to]
    assert all(peer["ip_block"] is None for peer in peers), peers  # no address outside the cluster
    quota = client.CoreV1Api(api).read_namespaced_resource_quota("testenv-worker", namespace)
    assert "limits.ephemeral-storage" in quota.spec.hard
    pod = client.AppsV1Api(api).read_namespaced_deployment("redis", namespace).spec.template.spec
    assert pod.security_context.seccomp_profile.type == "RuntimeDefault"
    (container,) = pod.containers
    assert container.security_context.capabilities.drop == ["ALL"]
    assert "NET_RAW" not in (container.security_context.capabilities.add or [])


def _kubectl_port_forward(kubeconfig: Path, namespace: str, pod: str, port: int) -> tuple[bool, str]:
    """`kubectl port-forward` as a CI job runs it: (True, its first line) once it forwards, else
    (False, its error)."""
    command = [str(toolchain.binary("kubectl")), "--kubeconfig", str(kubeconfig), "-n", namespace]
    command.append(f"--cache-dir={toolchain.kube_cache_dir()}")  # not ~/.kube/cache
    command += ["port-forward", f"pod/{pod}", f"{free_port()}:{port}"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            readable, _, _ = select.select([proc.stdout], [], [], 0.5)
            if readable:
                line = proc.stdout.readline()
                if line.startswith("Forwarding from"):
                    return True, line
                if not line:  # end of output: kubectl gave up
                    break
            elif proc.poll() is not None:
                break
    finally:
        proc.terminate()
        proc.wait(10)
    return False, proc.stderr.read()


# -- tests --------------------------------------------------------------------------------------


def test_install_makes_the_operator_deployment_ready(api: client.ApiClient, release: chart.Release) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    deployment = wait_for(
        lambda: (
            (
                d := apps.read_namespaced_deployment(release.deployment, release.namespace)
            ).status.ready_replicas
            == 1
            and d
        ),
        timeout=60,
        what="the operator Deployment to be Ready",
    )
    assert deployment.spec.replicas == 1
    assert deployment.spec.strategy.type == "RollingUpdate"  # safe: replicas elect one leader
    selector = ",".join(f"{k}={v}" for k, v in deployment.spec.selector.match_labels.items())
    pods = [
        p
        for p in core.list_namespaced_pod(release.namespace, label_selector=selector).items
        if not p.metadata.deletion_timestamp
    ]
    (pod,) = pods
    assert pod.status.phase == "Running"
    assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"
    assert pod.spec.service_account_name == release.service_account
    (container,) = pod.spec.containers
    assert container.liveness_probe.http_get.path == "/healthz"

    # The pod was admitted under Pod Security "restricted", and that level is really enforced
    # here: a pod without the chart's security settings is refused.
    labels = core.read_namespace(release.namespace).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(
            release.namespace,
            {"metadata": {"name": "plain"}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}},
            dry_run="All",
        )
    assert refused.value.status == 403
    assert "violates PodSecurity" in refused.value.body

    crd = client.ApiextensionsV1Api(api).read_custom_resource_definition(CRD_NAME)
    assert {c.type: c.status for c in crd.status.conditions}["Established"] == "True"
    status = json.loads(
        chart.helm(release.kubeconfig, "status", release.name, "-n", release.namespace, "-o", "json").stdout
    )
    assert status["info"]["status"] == "deployed"
    assert "kind: TestEnvironment" in release.install_output
    assert f"--clusterrole={release.pipeline_role}" in release.install_output


def test_the_chart_identity_runs_the_operators_main_scenario(
    api: client.ApiClient,
    release: chart.Release,
    chart_operator: OperatorProcess,
    teams: Callable[..., Team],
) -> None:
    team = teams("main")
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)

    # Create: the first TestEnvironment exactly as NOTES.txt has a user write it, by the pipeline.
    first = _notes_manifest(release.install_output, team.account)
    uid = te.create(team.api, team.namespace, first)["metadata"]["uid"]
    body = te.wait_phase(team.api, team.namespace, "hello", Phase.READY, readyWorkers=2)
    for worker in workers_from_status(body["status"]):
        binding = rbac.read_namespaced_role_binding("testenv-access", worker.namespace)
        assert binding.role_ref.name == release.worker_access_role
        assert [s.name for s in binding.subjects] == [team.account]

    # Scale up, add a service, read a Secret of the pipeline's namespace into the workers.
    core.create_namespaced_secret(
        team.namespace,
        {
            "metadata": {"name": "redis-auth", "labels": {LABEL_SHAREABLE: "true"}},
            "stringData": {"password": "s3cret"},
        },
    )
    password = {"secretKeyRef": {"name": "redis-auth", "key": "password"}}
    services = [
        {"name": "redis", "type": "redis", "env": [{"name": "REDIS_PASSWORD", "valueFrom": password}]},
        {"name": "mq", "type": "rabbitmq"},
    ]
    te.patch_spec(team.api, team.namespace, "hello", {"workers": 3, "services": services})
    body = te.wait_phase(team.api, team.namespace, "hello", Phase.READY, readyWorkers=3)
    workers = [w.namespace for w in workers_from_status(body["status"])]
    assert len(te.owned_namespaces(api, uid)) == 3
    for namespace in workers:
        assert core.read_namespaced_secret("redis-auth", namespace).metadata.labels[LABEL_OWNER_UID] == uid
        assert _deployments(api, namespace) == {"redis", "mq"}

    # Scale down, drop a service and the access grant: namespaces, a Deployment, a Service and
    # the RoleBinding are deleted one by one.
    smaller = {"workers": 1, "services": [{"name": "redis", "type": "redis"}], "access": None}
    te.patch_spec(team.api, team.namespace, "hello", smaller)
    te.wait_phase(team.api, team.namespace, "hello", Phase.READY, readyWorkers=1)
    kept = workers[0]
    assert wait_for(
        lambda: all(_namespace_gone(api, ns) for ns in workers[1:]),
        timeout=90,
        what="scaled-down namespaces to go",
    )
    assert wait_for(
        lambda: (
            _deployments(api, kept) == {"redis"}
            and _services(api, kept) == {"redis"}
            and "testenv-access" not in _role_bindings(api, kept)
        ),
        timeout=30,
        what="the dropped service and access grant to go",
    )

    # The orphan sweep deletes a worker namespace whose owner does not exist.
    orphan = f"te-orphan-{uuid.uuid4().hex[:6]}"
    orphan_labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_OWNER_UID: str(uuid.uuid4()),
        LABEL_OWNER_NAME: "long-gone",
        LABEL_OWNER_NAMESPACE: team.namespace,
    }
    core.create_namespace({"metadata": {"name": orphan, "labels": orphan_labels}})
    assert wait_for(
        lambda: _namespace_gone(api, orphan) or core.read_namespace(orphan).metadata.deletion_timestamp,
        timeout=30,
        what="the orphan sweep to delete the namespace",
    )

    # An environment whose heartbeat stopped is deleted by the operator itself.
    stale = te.manifest("stale", workers=1, lifetime={"ttlSeconds": 3600, "heartbeatTimeoutSeconds": 30})
    stale["metadata"]["annotations"] = {ANNOTATION_HEARTBEAT: "2020-01-01T00:00:00Z"}
    te.create(team.api, team.namespace, stale)
    assert wait_for(
        lambda: _environment_gone(team.api, team.namespace, "stale"),
        timeout=60,
        what="the expired environment to go",
    )

    # Delete: every worker namespace goes before the object does.
    te.delete(team.api, team.namespace, "hello")
    assert te.owned_namespaces(api, uid) == []

    reasons = {e.reason for e in core.list_namespaced_event(team.namespace).items}
    assert {"Provisioning", "Ready", "ScaledDown", "Expired", "Deleting"} <= reasons
    assert _permission_trouble(chart_operator) == []


def test_a_pipeline_without_the_pipeline_role_cannot_create_a_testenvironment(
    teams: Callable[..., Team],
) -> None:
    stranger = teams("norole", bound=False)
    member = teams("member")

    with pytest.raises(ApiException) as refused:
        te.create(stranger.api, stranger.namespace, te.manifest("nope"))
    assert refused.value.status == 403
    message = json.loads(refused.value.body)["message"]
    assert f'User "{stranger.user}" cannot create resource "testenvironments"' in message

    # The bound pipeline may, in its own namespace (a server-side dry run: authorized and
    # admitted, not stored), and not in anyone else's.
    as_member = client.CustomObjectsApi(member.api)
    as_member.create_namespaced_custom_object(
        GROUP, VERSION, member.namespace, PLURAL, te.manifest("mine"), dry_run="All"
    )
    with pytest.raises(ApiException) as elsewhere:
        as_member.create_namespaced_custom_object(
            GROUP, VERSION, stranger.namespace, PLURAL, te.manifest("theirs"), dry_run="All"
        )
    assert elsewhere.value.status == 403


def test_a_tenant_cannot_read_a_secret_through_the_operator(
    api: client.ApiClient, chart_operator: OperatorProcess, teams: Callable[..., Team]
) -> None:
    """The pipeline role cannot read Secrets; naming one in a spec must not copy it out for it.
    Only a Secret its writer shared (LABEL_SHAREABLE) is copied, and only the keys named."""
    team = teams("deputy")
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(
        team.namespace,
        {"metadata": {"name": "db-root"}, "stringData": {"user": "root", "password": "hunter2"}},
    )
    assert not chart.allowed(api, team.user, "get", "secrets", team.namespace)
    password = {"secretKeyRef": {"name": "db-root", "key": "password"}}
    services = [{"name": "redis", "type": "redis", "env": [{"name": "PW", "valueFrom": password}]}]
    te.create(team.api, team.namespace, te.manifest("peek", workers=1, services=services, access=team.access))
    pending = te.wait_phase(team.api, team.namespace, "peek", Phase.PENDING)
    assert f"{LABEL_SHAREABLE}=true" in pending["status"]["message"]
    namespaces = [
        n.metadata.name
        for n in core.list_namespace(label_selector=f"{LABEL_OWNER_NAMESPACE}={team.namespace}").items
    ]
    for namespace in namespaces:
        assert not core.list_namespaced_secret(namespace, label_selector=LABEL_OWNER_UID).items

    # Shared by someone who may write it: provisioning goes on, with the one key named.
    core.patch_namespaced_secret(
        "db-root", team.namespace, {"metadata": {"labels": {LABEL_SHAREABLE: "true"}}}
    )
    ready = te.wait_phase(team.api, team.namespace, "peek", Phase.READY)
    (worker,) = workers_from_status(ready["status"])
    copied = core.read_namespaced_secret("db-root", worker.namespace)
    assert sorted(copied.data) == ["password"]


def test_a_tenant_cannot_port_forward_into_another_tenants_workers(
    api: client.ApiClient, chart_operator: OperatorProcess, teams: Callable[..., Team]
) -> None:
    a, b = teams("a"), teams("b")
    for team in (a, b):
        te.create(team.api, team.namespace, te.manifest("suite", workers=1, access=team.access))
    worker_a, pod_a = _worker_pod(api, a, "suite")
    worker_b, pod_b = _worker_pod(api, b, "suite")
    redis = primary_port("redis")

    # A real port-forward through the API server: A into its own worker is upgraded ...
    assert wait_for(
        lambda: chart.port_forward_refusal(a.api, worker_a, pod_a, redis) is None,
        timeout=30,
        what="A's port-forward into its own worker to be allowed",
    )
    # ... B into A's worker, and A into B's, are refused by RBAC.
    refusal = chart.port_forward_refusal(b.api, worker_a, pod_a, redis)
    assert refusal is not None
    assert "403 Forbidden" in refusal
    assert b.user in refusal
    assert "pods/portforward" in refusal
    assert "403 Forbidden" in (chart.port_forward_refusal(a.api, worker_b, pod_b, redis) or "")

    # The same with kubectl, as a CI job runs it.
    forwarding, said = _kubectl_port_forward(a.kubeconfig, worker_a, pod_a, redis)
    assert forwarding, said
    forwarding, said = _kubectl_port_forward(b.kubeconfig, worker_a, pod_a, redis)
    assert not forwarding
    assert "forbidden" in said

    # The API server's authorizer agrees, for both verbs a port-forward can need.
    for verb in ("get", "create"):
        assert chart.allowed(api, a.user, verb, "pods", worker_a, subresource="portforward")
        assert not chart.allowed(api, b.user, verb, "pods", worker_a, subresource="portforward")
        assert not chart.allowed(api, a.user, verb, "pods", worker_b, subresource="portforward")
    assert not chart.allowed(api, b.user, "list", "pods", worker_a)
    assert not chart.allowed(api, b.user, "get", PLURAL, a.namespace, group=GROUP)
    assert _permission_trouble(chart_operator) == []


def test_the_operator_identity_holds_nothing_cluster_admin_like(
    api: client.ApiClient, release: chart.Release, tmp_path: Path
) -> None:
    user = release.operator_user
    assert chart.allowed(api, user, "bind", "clusterroles", group=RBAC_GROUP, name=release.worker_access_role)
    for role in ("cluster-admin", "admin", "edit", release.pipeline_role):
        assert not chart.allowed(api, user, "bind", "clusterroles", group=RBAC_GROUP, name=role), role
    refused = [
        ("create", "pods", "", ""),
        ("create", "pods", "", "exec"),
        ("get", "pods", "", "log"),
        ("create", "pods", "", "portforward"),
        ("get", "nodes", "", ""),
        ("update", "namespaces", "", ""),
        ("create", "clusterroles", RBAC_GROUP, ""),
        ("create", "clusterrolebindings", RBAC_GROUP, ""),
        ("escalate", "clusterroles", RBAC_GROUP, ""),
        ("impersonate", "serviceaccounts", "", ""),
        ("create", "serviceaccounts", "", "token"),
        ("create", PLURAL, GROUP, ""),
        ("update", PLURAL, GROUP, ""),
        ("update", "customresourcedefinitions", "apiextensions.k8s.io", ""),
    ]
    for verb, resource, group, subresource in refused:
        assert not chart.allowed(api, user, verb, resource, "default", subresource, group), (verb, resource)

    # For real, as the operator: a RoleBinding to cluster-admin is refused (RBAC's escalation
    # check), one to the worker-access role is accepted (server-side dry runs, nothing stored).
    kubeconfig = chart.token_kubeconfig(
        api, release.kubeconfig, release.namespace, release.service_account, tmp_path / "op.kubeconfig"
    )
    as_operator = client.RbacAuthorizationV1Api(chart.client_for(kubeconfig))

    def binding(role: str) -> dict[str, Any]:
        subject = {"kind": "ServiceAccount", "name": release.service_account, "namespace": release.namespace}
        return {
            "metadata": {"name": f"probe-{role}"},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
            "subjects": [subject],
        }

    with pytest.raises(ApiException) as escalation:
        as_operator.create_namespaced_role_binding(release.namespace, binding("cluster-admin"), dry_run="All")
    assert escalation.value.status == 403
    as_operator.create_namespaced_role_binding(
        release.namespace, binding(release.worker_access_role), dry_run="All"
    )

    # No role of the release grants "*".
    rbac = client.RbacAuthorizationV1Api(api)
    selector = f"app.kubernetes.io/instance={release.name}"
    roles = rbac.list_cluster_role(label_selector=selector).items
    roles += rbac.list_role_for_all_namespaces(label_selector=selector).items
    assert roles
    for role in roles:
        for rule in role.rules:
            for field in (rule.verbs, rule.resources, rule.api_groups):
                assert "*" not in (field or []), (role.metadata.name, rule)


def test_a_release_with_watch_namespaces_serves_only_those(
    api: client.ApiClient,
    local_cluster: Cluster,
    chart_operator: OperatorProcess,
    teams: Callable[..., Team],
    tmp_path: Path,
) -> None:
    served, ignored = teams("served"), teams("ignored")
    chart_operator.stop()  # one operator at a time: the cluster-wide one would serve both teams
    scoped: chart.Release | None = None
    process: OperatorProcess | None = None
    try:
        values = {
            **FAST,
            "watchNamespaces": [served.namespace],
            "tenantQuota": {"testEnvironments": 3},
            "allowedRegistries": ["registry.example.com"],
        }
        scoped = chart.install(api, local_cluster.kubeconfig, "testenv-scoped", "testenv-scoped", values)
        assert scoped.operator_env(api)["TESTENV_NAMESPACES"] == served.namespace
        user = scoped.operator_user
        # The rights on TestEnvironments come from a Role in the watched namespace only.
        assert chart.allowed(api, user, "watch", PLURAL, served.namespace, group=GROUP)
        assert chart.allowed(api, user, "create", "events", served.namespace)
        assert not chart.allowed(api, user, "watch", PLURAL, ignored.namespace, group=GROUP)
        assert not chart.allowed(api, user, "list", PLURAL, None, group=GROUP)
        assert not chart.allowed(api, user, "create", "events", ignored.namespace)

        process = _start_operator(api, scoped, tmp_path)
        # Quota admission refuses everything the quota counts until its controller has counted.
        wait_for(
            lambda: all(
                q.status.hard
                for q in client.CoreV1Api(api).list_namespaced_resource_quota(served.namespace).items
            ),
            timeout=30,
            what="the tenant quota's first count",
        )
        te.create(ignored.api, ignored.namespace, te.manifest("not-served", workers=1))
        te.create(served.api, served.namespace, te.manifest("served", workers=1))
        ready = te.wait_phase(served.api, served.namespace, "served", Phase.READY)
        _assert_fenced(api, workers_from_status(ready["status"])[0].namespace)
        time.sleep(3)  # a resync and more: time enough to touch the other one, were it served
        untouched = te.get(api, ignored.namespace, "not-served")
        assert not untouched.get("status")
        assert FINALIZER not in (untouched["metadata"].get("finalizers") or [])

        # An image override from a registry the release does not allow is refused.
        elsewhere = [{"name": "redis", "type": "redis", "image": "redis:7"}]
        te.create(served.api, served.namespace, te.manifest("elsewhere", workers=1, services=elsewhere))
        refused = te.wait_phase(served.api, served.namespace, "elsewhere", Phase.FAILED)
        assert "docker.io/library/redis" in refused["status"]["message"]
        assert "TESTENV_ALLOWED_REGISTRIES" in refused["status"]["message"]

        # The release's quota in the watched namespace caps the objects a tenant can pile up.
        te.create(served.api, served.namespace, te.manifest("second", workers=1))
        with pytest.raises(ApiException) as over_quota:
            te.create(served.api, served.namespace, te.manifest("third", workers=1))
        assert over_quota.value.status == 403
        assert "exceeded quota" in json.loads(over_quota.value.body)["message"]
        te.delete_many(served.api, served.namespace, ["second", "elsewhere"])

        te.delete(served.api, served.namespace, "served")
        te.delete(ignored.api, ignored.namespace, "not-served")
        assert _permission_trouble(process) == []
    finally:
        if process:
            process.stop()
        if scoped:
            scoped.uninstall()
            client.CoreV1Api(api).delete_namespace(scoped.namespace)
        chart_operator.start()


# -- a pipeline's runs under the pipeline role alone ----------------------------------------------

#: The pipeline role's verbs on TestEnvironments that a run uses.
RUN_VERBS = ("create", "get", "list", "patch", "delete")


def _pipeline_run(team: Team, lines: list[str], **options: Any) -> RunSession:
    """A run as the plugin and the CLI make it, with the pipeline's token kubeconfig and nothing else:
    no namespace given (the kubeconfig's context names it), the cluster's operator."""
    settings: dict[str, Any] = {
        "workers": 2,
        "manifest": te.manifest("suite"),
        "provider": "existing",
        "kubeconfig": str(team.kubeconfig),
        "timeout": 120,
        **options,
    }
    return RunSession(RunOptions(**settings), lines.append)


def _refusal(team: Team) -> str:
    """The AccessError a pipeline run's set-up stops with (the run is stopped again)."""
    session = _pipeline_run(team, [])
    try:
        with pytest.raises(AccessError) as refused:
            session.start()
    finally:
        session.stop()
        session.remove_run_dir()
    return str(refused.value)


def _pods(api: client.ApiClient, namespace: str) -> set[str]:
    return {p.metadata.name for p in client.CoreV1Api(api).list_namespaced_pod(namespace).items}


def test_a_pipeline_runs_and_restarts_its_workers_with_the_pipeline_role_alone(
    api: client.ApiClient, chart_operator: OperatorProcess, teams: Callable[..., Team]
) -> None:
    team = teams("runs")
    lines: list[str] = []
    session = _pipeline_run(team, lines, wait_teardown=True)
    try:
        handoff = session.start()
        assert handoff.namespace == team.namespace, "the namespace comes from the kubeconfig's context"
        # The run found out who it is and granted itself its workers; nobody wrote spec.access.
        spec = te.get(team.api, team.namespace, session.name)["spec"]
        subject = {"kind": "ServiceAccount", "namespace": team.namespace, "name": "pipeline"}
        assert spec["access"]["subjects"] == [subject]
        assert any("added to spec.access.subjects" in line for line in lines), lines
        for slot in (0, 1):
            env = TestEnv(handoff, slot).wait_ready()
            env.require_rights(FORWARD_RIGHTS)
            before = _pods(api, env.namespace)
            env.restart("redis", timeout=60, probe=False)  # kwok's pods: nothing to probe
            assert _pods(api, env.namespace).isdisjoint(before), "a new pod serves the worker"
    finally:
        summary = session.stop()
        session.remove_run_dir()
    # It may not list namespaces: it waited for the finalizer, which goes after them.
    assert "all namespaces deleted" in summary, summary
    assert _permission_trouble(chart_operator) == []


def test_a_manifests_own_access_is_kept_and_added_to(
    chart_operator: OperatorProcess, teams: Callable[..., Team]
) -> None:
    team = teams("shares")
    other = {"kind": "ServiceAccount", "name": "reader"}
    session = _pipeline_run(team, [], manifest=te.manifest("suite", access={"subjects": [other]}))
    try:
        session.start()
        subjects = te.get(team.api, team.namespace, session.name)["spec"]["access"]["subjects"]
        assert subjects == [
            other,
            {"kind": "ServiceAccount", "namespace": team.namespace, "name": "pipeline"},
        ]
    finally:
        session.stop()
        session.remove_run_dir()


@pytest.mark.parametrize("verb", RUN_VERBS)
def test_a_missing_pipeline_right_is_named_with_the_identity_and_the_role(
    api: client.ApiClient, chart_operator: OperatorProcess, teams: Callable[..., Team], verb: str
) -> None:
    team = teams(f"no-{verb}", bound=False)
    rbac = client.RbacAuthorizationV1Api(api)
    kept = [v for v in RUN_VERBS if v != verb]
    rule = {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": kept}
    rbac.create_namespaced_role(team.namespace, {"metadata": {"name": "almost"}, "rules": [rule]})
    rbac.create_namespaced_role_binding(
        team.namespace,
        {
            "metadata": {"name": "almost"},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": "almost"},
            "subjects": [{"kind": "ServiceAccount", "name": "pipeline", "namespace": team.namespace}],
        },
    )
    wait_for(
        lambda: chart.allowed(api, team.user, kept[0], PLURAL, team.namespace, group=GROUP),
        timeout=10,
        what="the Role to take effect",
    )
    message = _refusal(team)
    assert f"{verb} testenvironments" in message, message
    assert f"{team.namespace}/pipeline" in message or team.user in message, message
    assert "pipeline ClusterRole" in message, message
    assert "not installed" not in message, message
    made = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, team.namespace, PLURAL)
    assert made["items"] == [], "refused before anything was created"


def test_no_pipeline_role_at_all_is_named_not_reported_as_not_installed(
    chart_operator: OperatorProcess, teams: Callable[..., Team]
) -> None:
    stranger = teams("none", bound=False)
    message = _refusal(stranger)
    assert "refused to list testenvironments" in message, message
    assert stranger.user in message, message
    assert "pipeline ClusterRole" in message, message


def test_workers_not_granted_to_the_run_are_refused_by_name(
    chart_operator: OperatorProcess, teams: Callable[..., Team]
) -> None:
    """An environment that does not name the pipeline (made by hand, not by the harness): its
    forwards and restarts are refused with the missing rights and the role that grants them."""
    team = teams("ungranted")
    te.create(team.api, team.namespace, te.manifest("byhand", workers=1))
    te.wait_phase(team.api, team.namespace, "byhand", Phase.READY)
    handoff = Handoff(
        kubeconfig=str(team.kubeconfig),
        namespace=team.namespace,
        name="byhand",
        run_id="byhand",
        run_dir=str(Path(tempfile.mkdtemp())),
        provider="existing",
        timeout=30,
    )
    env = TestEnv(handoff, 0).wait_ready()
    with pytest.raises(AccessError) as forward:
        env.forward()
    assert "create pods/portforward" in str(forward.value), forward.value
    assert "worker-access ClusterRole" in str(forward.value)
    with pytest.raises(AccessError) as restart:
        env.restart("redis", timeout=10, probe=False)
    assert "delete pods" in str(restart.value), restart.value


def test_a_pipeline_drives_every_cli_step_with_its_token_kubeconfig(
    api: client.ApiClient, chart_operator: OperatorProcess, teams: Callable[..., Team]
) -> None:
    """up, env, status, restart, exec and down, as a CI script runs them: KUBECONFIG is the
    pipeline's token kubeconfig and nothing else is given (no namespace, no access)."""
    team = teams("cli")
    run = f"cli-{uuid.uuid4().hex[:6]}"
    environment = {**os.environ, "KUBECONFIG": str(team.kubeconfig)}

    def testenv(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*TESTENV, *args], env=environment, capture_output=True, text=True, timeout=240, check=False
        )
        assert done.returncode == 0, f"testenv {' '.join(args)}: {done.stderr}"
        return done

    testenv(
        "up", "--service", "redis", "--workers", "2", "--cluster", "existing", "--run", run, "--timeout=120"
    )
    try:
        worker = json.loads(testenv("env", "--run", run, "--worker", "1", "--format", "json").stdout)
        assert worker["TESTENV_NAMESPACE"].startswith(f"te-{team.namespace}-"), worker
        assert worker["REDIS_URL"].startswith("redis://localhost:"), worker
        (row,) = json.loads(testenv("status", "--run", run, "-o", "json").stdout)
        assert row["cluster_view"] == {"phase": "Ready", "readyWorkers": 2}, row
        before = _pods(api, worker["TESTENV_NAMESPACE"])
        testenv("restart", "redis", "--run", run, "--worker", "1")
        assert _pods(api, worker["TESTENV_NAMESPACE"]).isdisjoint(before)
        shown = testenv(
            "exec", "--run", run, "--", sys.executable, "-c", "import os; print(os.environ['REDIS_URL'])"
        )
        assert shown.stdout.strip().startswith("redis://localhost:")
    finally:
        testenv("down", "--run", run)
    wait_for(
        lambda: (
            not client.CustomObjectsApi(api).list_namespaced_custom_object(
                GROUP, VERSION, team.namespace, PLURAL
            )["items"]
        ),
        timeout=60,
        what="the run's environment to be deleted",
    )
    assert _permission_trouble(chart_operator) == []


def test_uninstall_leaves_no_operator_made_object_behind(
    api: client.ApiClient,
    local_cluster: Cluster,
    chart_operator: OperatorProcess,
    teams: Callable[..., Team],
    tmp_path: Path,
) -> None:
    team = teams("bye")
    core = client.CoreV1Api(api)
    chart_operator.stop()  # this test's release runs the only operator
    bye: chart.Release | None = None
    process: OperatorProcess | None = None
    try:
        bye = chart.install(api, local_cluster.kubeconfig, "testenv-bye", "testenv-bye", FAST)
        process = _start_operator(api, bye, tmp_path)
        core.create_namespaced_secret(
            team.namespace,
            {"metadata": {"name": "token", "labels": {LABEL_SHAREABLE: "true"}}, "stringData": {"t": "x"}},
        )
        services = [
            {
                "name": "aws",
                "type": "localstack",
                "localstack": {"authTokenSecretRef": {"name": "token", "key": "t"}},
            },
            {"name": "redis", "type": "redis"},
        ]
        spec = te.manifest("suite", workers=2, services=services, access=team.access)
        uid = te.create(team.api, team.namespace, spec)["metadata"]["uid"]
        te.wait_phase(team.api, team.namespace, "suite", Phase.READY, readyWorkers=2)
        owner = f"{LABEL_OWNER_NAMESPACE}={team.namespace}"
        made = {kind: len(lister(api, owner).items) for kind, lister in chart.OPERATOR_MADE.items()}
        assert all(made.values()), f"the scenario should make every kind: {made}"

        # Environments first (their finalizer needs the operator), then the release.
        te.delete(team.api, team.namespace, "suite")
        assert te.owned_namespaces(api, uid) == []
        process.stop()
        assert _permission_trouble(process) == []
        bye.uninstall()

        left = {
            kind: [o.metadata.name for o in lister(api, owner).items]
            for kind, lister in chart.OPERATOR_MADE.items()
        }
        assert left == {kind: [] for kind in chart.OPERATOR_MADE}

        selector = f"app.kubernetes.io/instance={bye.name}"
        rbac, apps = client.RbacAuthorizationV1Api(api), client.AppsV1Api(api)
        assert rbac.list_cluster_role(label_selector=selector).items == []
        assert rbac.list_cluster_role_binding(label_selector=selector).items == []
        assert rbac.list_role_for_all_namespaces(label_selector=selector).items == []
        assert rbac.list_role_binding_for_all_namespaces(label_selector=selector).items == []
        assert core.list_namespaced_service_account(bye.namespace, label_selector=selector).items == []
        assert apps.list_namespaced_deployment(bye.namespace, label_selector=selector).items == []
        assert wait_for(
            lambda: not core.list_namespaced_pod(bye.namespace, label_selector=selector).items,
            timeout=60,
            what="the operator pod to go",
        )
        releases = chart.helm(bye.kubeconfig, "list", "-n", bye.namespace, "-q").stdout.split()
        assert bye.name not in releases
        # Helm never deletes what crds/ installed: the CRD stays for the next install (by design).
        client.ApiextensionsV1Api(api).read_custom_resource_definition(CRD_NAME)
    finally:
        if process:
            process.stop()
        if bye:
            bye.uninstall()
            core.delete_namespace(bye.namespace)
        chart_operator.start()
