"""The Helm chart and the operator image, checked without a cluster (but with the pinned helm,
which `make tools` builds: hence this tier, so the unit tier runs with nothing built).

helm lint and helm template run the real (pinned) helm; the rendered objects are checked against
the operator's own code: the settings parser reads the chart's environment, and the RBAC rules are
compared with the kinds `kubeio` and the reconciler touch. The Dockerfile's instructions are
checked statically against the package and the chart here; the kind tier builds and runs it.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import testenv_operator.settings as settings_module
from testenv_api import GROUP, KIND, PLURAL, POOL_KIND, POOL_PLURAL, VERSION
from testenv_harness.provision import toolchain
from testenv_operator import kubeio, reconciler
from testenv_operator.catalog import DEFAULT_IMAGES, FAULT_PROXY_IMAGE
from testenv_operator.settings import Settings, SettingsError
from testenv_operator.validation import validate

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "testenv-operator"
DOCKERFILE = ROOT / "operator" / "Dockerfile"
#: The cluster version the project pins. Passed explicitly: helm built from source (as `make
#: tools` does) lacks the link flag that sets its default, and would assume v1.20.0.
KUBE_VERSION = toolchain.KUBERNETES_VERSION
RELEASE, NAMESPACE = "testenv-operator", "testenv-system"
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
Doc = dict[str, Any]


# -- running helm -------------------------------------------------------------------------------


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(toolchain.binary("helm")), *args], capture_output=True, text=True, timeout=60, check=False
    )


def _with_values(values: dict[str, Any] | None, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(values or {}, file)
        file.flush()
        return _helm(*args, "-f", file.name)


def render(values: dict[str, Any] | None = None, release: str = RELEASE) -> list[Doc]:
    result = _with_values(
        values, "template", release, str(CHART), "-n", NAMESPACE, "--kube-version", KUBE_VERSION
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def refusal(values: dict[str, Any]) -> str:
    result = _with_values(
        values, "template", RELEASE, str(CHART), "-n", NAMESPACE, "--kube-version", KUBE_VERSION
    )
    assert result.returncode != 0, f"rendered although it should not:\n{result.stdout[:500]}"
    return result.stderr


def one(docs: list[Doc], kind: str, component: str | None = None) -> Doc:
    found = [
        d
        for d in docs
        if d["kind"] == kind
        and (component is None or d["metadata"]["labels"].get("app.kubernetes.io/component") == component)
    ]
    assert len(found) == 1, f"{len(found)} {kind} ({component}) objects"
    return found[0]


def container(docs: list[Doc]) -> Doc:
    (operator,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    result: Doc = operator
    return result


def env_of(docs: list[Doc]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(docs)["env"]}


def rules(role: Doc) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples a role grants (resourceNames-restricted rules left out)."""
    return {
        (group, resource, verb)
        for rule in role["rules"]
        if not rule.get("resourceNames")
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.fixture(scope="module")
def default() -> list[Doc]:
    return render()


EDGE_VALUES: dict[str, Any] = {
    "fullnameOverride": "a-very-long-full-name-override-that-goes-on-and-on-beyond-what-kubernetes-allows",
    "watchNamespaces": ["team-a", "team-b"],
    "image": {
        "repository": "registry.example.com:5000/platform/testenv-operator",
        "tag": "0.1.0-rc.1",
        "digest": "sha256:" + "0123456789abcdef" * 4,
    },
    "serviceImages": {
        "redis": "valkey/valkey:8.1",
        "kafka": "registry.example.com/mirror/apache/kafka:4.1.1",
    },
    "podLabels": {"team": "platform", "app.kubernetes.io/name": "overridden"},
    "logLevel": "DEBUG",
    "limits": {
        "maxWorkersPerEnvironment": 256,
        "maxEnvironmentsPerNamespace": 1,
        "workerCPU": 2,
        "workerMemory": "0.5Gi",
    },
}


# -- lint and render ----------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, EDGE_VALUES], ids=["defaults", "edge values"])
def test_helm_lint_is_clean(values: dict[str, Any] | None) -> None:
    result = _with_values(values, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout, result.stdout
    assert "[ERROR]" not in result.stdout, result.stdout


def test_default_render_is_the_operator_and_its_roles(default: list[Doc]) -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in default)
    assert kinds == [
        ("ClusterRole", "testenv-operator"),
        ("ClusterRole", "testenv-operator-pipeline"),
        ("ClusterRole", "testenv-operator-worker-access"),
        ("ClusterRoleBinding", "testenv-operator"),
        ("Deployment", "testenv-operator"),
        ("Role", "testenv-operator-leader"),
        ("RoleBinding", "testenv-operator-leader"),
        ("Service", "testenv-operator"),
        ("ServiceAccount", "testenv-operator"),
    ]
    for doc in default:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if doc["kind"] in ("Deployment", "Service", "ServiceAccount", "Role", "RoleBinding"):
            assert doc["metadata"]["namespace"] == NAMESPACE


def test_deployment_is_a_rolling_probed_restricted_set_of_elected_replicas(default: list[Doc]) -> None:
    deployment = one(default, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert one(render({"replicas": 2}), "Deployment")["spec"]["replicas"] == 2
    # Safe to roll: the new pod waits for the Lease the old one gives up on SIGTERM.
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert env_of(default)["TESTENV_LEADER_ELECTION"] == f"{NAMESPACE}/{deployment['metadata']['name']}"
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == one(default, "ServiceAccount")["metadata"]["name"]
    operator = container(default)
    assert operator["image"] == f"testenv-operator:{_chart()['appVersion']}"

    # The probes hit the endpoint the operator is told to serve.
    liveness = env_of(default)["TESTENV_LIVENESS"]
    port = _port(operator, "liveness")
    assert liveness == f"http://0.0.0.0:{port['containerPort']}/healthz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert operator[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}

    assert set(operator["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(operator["resources"]["limits"])

    # What Pod Security "restricted" asks for (the integration test has the API server admit it).
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = operator["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["readOnlyRootFilesystem"] is True
    assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)
    assert all(set(volume) <= {"name", "emptyDir"} for volume in pod["volumes"])


def test_the_operator_reads_the_environment_the_chart_sets() -> None:
    values = {
        "watchNamespaces": ["ci-a", "ci-b"],
        "limits": {
            "maxWorkersPerEnvironment": 12,
            "maxEnvironmentsPerNamespace": 3,
            "maxWorkersPerNamespace": 40,
            "workerCPU": 4,
            "workerMemory": "6Gi",
            "workerEphemeralStorage": "4Gi",
        },
        "workerEgress": "open",
        "allowedRegistries": ["registry.example.com:5000", "ghcr.io/acme"],
        "serviceImages": {"redis": "valkey/valkey:8.1", "postgres": "mirror.example.com/postgres:17.6"},
        "logLevel": "WARNING",
        "resyncSeconds": 30,
        "orphanSweepSeconds": 600,
        "resyncsPerSecond": 20,
        "livenessPort": 9090,
        "metrics": {"enabled": True, "port": 9091},
        "leaseSeconds": 20,
    }
    docs = render(values)
    env = env_of(docs)
    # Every variable the chart sets is one the operator documents (and so reads).
    assert all(
        f"| {name} |" in (settings_module.__doc__ or "")
        for name in env
        if not name.startswith("TESTENV_IMAGE_")
    )
    assert {name for name in env if name.startswith("TESTENV_IMAGE_")} <= {
        f"TESTENV_IMAGE_{kind.upper()}" for kind in DEFAULT_IMAGES
    }
    settings = Settings.from_env(env)
    assert settings == Settings(
        namespaces=("ci-a", "ci-b"),
        max_workers=12,
        max_environments_per_namespace=3,
        max_workers_per_namespace=40,
        worker_cpu="4",
        worker_memory="6Gi",
        worker_ephemeral_storage="4Gi",
        worker_egress="open",
        allowed_registries=("registry.example.com:5000", "ghcr.io/acme"),
        images={"redis": "valkey/valkey:8.1", "postgres": "mirror.example.com/postgres:17.6"},
        access_cluster_role=one(docs, "ClusterRole", "worker-access")["metadata"]["name"],
        resync_seconds=30,
        resyncs_per_second=20,
        sweep_seconds=600,
        liveness="http://0.0.0.0:9090/healthz",
        metrics="http://0.0.0.0:9091/metrics",
        log_level="WARNING",
        leader_election=(NAMESPACE, one(docs, "Deployment")["metadata"]["name"]),
        lease_seconds=20,
    )


def test_default_settings_are_the_operators_defaults(default: list[Doc]) -> None:
    from_chart = Settings.from_env(env_of(default))
    built_in = Settings()
    for field in (
        "namespaces",
        "max_workers",
        "max_environments_per_namespace",
        "max_workers_per_namespace",
        "worker_cpu",
        "worker_memory",
        "worker_ephemeral_storage",
        "worker_egress",
        "allowed_registries",
        "lease_seconds",
        "resyncs_per_second",
    ):
        assert getattr(from_chart, field) == getattr(built_in, field), field
    assert (from_chart.images, from_chart.resync_seconds, from_chart.sweep_seconds) == ({}, 10, 60)
    assert (from_chart.liveness, from_chart.log_level) == (built_in.liveness, built_in.log_level)
    assert from_chart.metrics == built_in.metrics == "http://0.0.0.0:8081/metrics"


# -- metrics: the endpoint, its Service, the ServiceMonitor -------------------------------------


def _port(operator: Doc, name: str) -> Doc:
    (port,) = [p for p in operator["ports"] if p["name"] == name]
    result: Doc = port
    return result


def test_metrics_are_served_on_their_port_behind_the_operators_service(default: list[Doc]) -> None:
    operator = container(default)
    port = _port(operator, "metrics")
    assert (port["containerPort"], port["protocol"]) == (8081, "TCP")
    assert env_of(default)["TESTENV_METRICS"] == f"http://0.0.0.0:{port['containerPort']}/metrics"
    assert Settings.from_env(env_of(default)).metrics == "http://0.0.0.0:8081/metrics"
    service = one(default, "Service")
    assert service["metadata"]["namespace"] == NAMESPACE
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}
    ]
    # It selects the operator pods, whatever podLabels add, and nothing else of the release.
    pod_labels = one(default, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "operator"
    assert not [d for d in default if d["kind"] == "ServiceMonitor"], "the ServiceMonitor is off by default"

    moved = render({"metrics": {"port": 9100}, "livenessPort": 9099})
    assert _port(container(moved), "metrics")["containerPort"] == 9100
    assert one(moved, "Service")["spec"]["ports"][0]["port"] == 9100
    assert Settings.from_env(env_of(moved)).metrics == "http://0.0.0.0:9100/metrics"


def test_metrics_turned_off_leave_no_port_no_service_and_tell_the_operator() -> None:
    docs = render({"metrics": {"enabled": False}})
    assert [p["name"] for p in container(docs)["ports"]] == ["liveness"]
    assert not [d for d in docs if d["kind"] in ("Service", "ServiceMonitor")]
    # The operator serves them by default: the chart must say off, not just say nothing.
    assert env_of(docs)["TESTENV_METRICS"] == ""
    assert Settings.from_env(env_of(docs)).metrics == ""


def test_the_service_monitor_scrapes_the_metrics_port_of_the_operators_service() -> None:
    values = {
        "metrics": {"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}}}
    }
    docs = render(values)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    service = one(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    assert service["spec"]["ports"][0]["name"] == "metrics"
    # Its labels cannot take the release's own away.
    clash = {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"app.kubernetes.io/instance": "x"}}}}
    assert one(render(clash), "ServiceMonitor")["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    lint = _with_values(values, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


@pytest.mark.parametrize(
    ("path", "variable"),
    [
        (("limits", "maxWorkersPerEnvironment"), "TESTENV_MAX_WORKERS"),
        (("limits", "maxEnvironmentsPerNamespace"), "TESTENV_MAX_ENVIRONMENTS_PER_NAMESPACE"),
        (("limits", "maxWorkersPerNamespace"), "TESTENV_MAX_WORKERS_PER_NAMESPACE"),
        (("resyncSeconds",), "TESTENV_RESYNC_SECONDS"),
        (("orphanSweepSeconds",), "TESTENV_SWEEP_SECONDS"),
        (("resyncsPerSecond",), "TESTENV_RESYNCS_PER_SECOND"),
        (("leaseSeconds",), "TESTENV_LEASE_SECONDS"),
    ],
)
def test_schema_ranges_are_the_operators_ranges(path: tuple[str, ...], variable: str) -> None:
    """What the schema lets through the operator accepts, and one step further it refuses."""
    node = _schema()
    for key in path:
        node = node["properties"][key]
    low, high = node["minimum"], node["maximum"]
    Settings.from_env({variable: str(low)})
    Settings.from_env({variable: str(high)})
    for outside in (low - 1, high + 1):
        with pytest.raises(SettingsError):
            Settings.from_env({variable: str(outside)})


# -- RBAC ---------------------------------------------------------------------------------------

#: kubeio kind -> (API group, resource): what the operator server-side applies and lists.
RESOURCES = {
    "Namespace": ("", "namespaces"),
    "ResourceQuota": ("", "resourcequotas"),
    "LimitRange": ("", "limitranges"),
    "Secret": ("", "secrets"),
    "Service": ("", "services"),
    "Deployment": ("apps", "deployments"),
    "NetworkPolicy": ("networking.k8s.io", "networkpolicies"),
    "RoleBinding": ("rbac.authorization.k8s.io", "rolebindings"),
}
#: Deleted one by one: namespaces (scale-down, teardown, orphans) and, by the reconciler's
#: prune, a removed service's Deployment and Service and withdrawn access's RoleBinding.
DELETED = {"Namespace", "Deployment", "Service", "RoleBinding"}
#: Watched by kopf handlers (handlers.py: on.event), plus the CRDs kopf itself watches.
WATCHED = {"Namespace", "Deployment"}
TENANT_RULES = {
    (GROUP, PLURAL, "list"),  # kopf, the per-namespace limit, the orphan sweep (owners by UID)
    (GROUP, PLURAL, "watch"),  # kopf
    (GROUP, PLURAL, "patch"),  # kopf: finalizer and bookkeeping annotations
    (GROUP, PLURAL, "delete"),  # an expired environment deletes itself
    (GROUP, f"{PLURAL}/status", "patch"),
    ("", "events", "create"),  # kopf posts Events on the environment
    ("", "secrets", "get"),  # Secrets a spec references, in its own namespace
    (GROUP, POOL_PLURAL, "list"),  # kopf, the orphan sweep (a pool owns its free workers)
    (GROUP, POOL_PLURAL, "watch"),  # kopf
    (GROUP, POOL_PLURAL, "patch"),  # kopf: finalizer and bookkeeping annotations
    (GROUP, f"{POOL_PLURAL}/status", "patch"),
}


def _expected_cluster_rules() -> set[tuple[str, str, str]]:
    expected = {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
    expected.add(("", "pods", "deletecollection"))  # teardown drops pods without a grace period
    expected.add(("", "namespaces", "get"))  # is a planned namespace taken by someone else?
    for kind in kubeio.KINDS:  # KeyError here: the operator handles a new kind; grant it
        group, resource = RESOURCES[kind]
        # Server-side apply needs patch, and create when the object does not exist yet; the
        # drift check lists every kind across all namespaces.
        expected |= {(group, resource, verb) for verb in ("create", "patch", "list")}
        if kind in DELETED:
            expected.add((group, resource, "delete"))
        if kind in WATCHED:
            expected.add((group, resource, "watch"))
    return expected


def test_every_kind_the_reconciler_observes_is_one_kubeio_knows() -> None:
    assert set(reconciler._NAMESPACED_KINDS) | {"Namespace"} == set(kubeio.KINDS)


def test_operator_cluster_role_is_exactly_what_the_operator_uses(default: list[Doc]) -> None:
    role = one(default, "ClusterRole", "operator")
    assert rules(role) == _expected_cluster_rules() | TENANT_RULES
    (bind,) = [rule for rule in role["rules"] if rule.get("resourceNames")]
    worker_access = one(default, "ClusterRole", "worker-access")["metadata"]["name"]
    assert bind == {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["clusterroles"],
        "verbs": ["bind"],
        "resourceNames": [worker_access],
    }
    binding = one(default, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "testenv-operator", "namespace": NAMESPACE}
    ]


def test_the_leader_role_reads_and_renews_one_lease_in_the_release_namespace(default: list[Doc]) -> None:
    role = one(default, "Role", "leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert rules(role) == {("coordination.k8s.io", "leases", verb) for verb in ("get", "create", "update")}
    binding = one(default, "RoleBinding", "leader-election")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == one(default, "ClusterRoleBinding")["subjects"]


def test_no_role_grants_wildcards_or_escalation(default: list[Doc]) -> None:
    for values in (None, EDGE_VALUES):
        docs = default if values is None else render(values)
        for role in (d for d in docs if d["kind"] in ("ClusterRole", "Role")):
            for rule in role["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[field], (role["metadata"]["name"], rule)
                assert not {"escalate", "impersonate"} & set(rule["verbs"]), rule
                assert "bind" not in rule["verbs"] or rule.get("resourceNames"), rule


def test_watch_namespaces_moves_the_tenant_rules_into_roles_there() -> None:
    docs = render({"watchNamespaces": ["team-a", "team-b"]})
    assert env_of(docs)["TESTENV_NAMESPACES"] == "team-a,team-b"
    assert rules(one(docs, "ClusterRole", "operator")) == _expected_cluster_rules()
    tenant = [d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"]
    roles = {d["metadata"]["namespace"]: d for d in tenant if d["kind"] == "Role"}
    bindings = {d["metadata"]["namespace"]: d for d in tenant if d["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for namespace, role in roles.items():
        assert rules(role) == TENANT_RULES
        binding = bindings[namespace]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "testenv-operator", "namespace": NAMESPACE}
        ]
    quotas = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "ResourceQuota"}
    assert set(quotas) == {"team-a", "team-b"}
    for quota in quotas.values():
        assert quota["spec"]["hard"] == {"count/testenvironments.testenv.dev": "40"}
    no_quota = render({"watchNamespaces": ["team-a"], "tenantQuota": {"testEnvironments": 0}})
    assert not [d for d in no_quota if d["kind"] == "ResourceQuota"]


def test_worker_access_role_reads_port_forwards_and_restarts_only(default: list[Doc]) -> None:
    assert rules(one(default, "ClusterRole", "worker-access")) == {
        ("", "pods", "get"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        # A restart deletes the service's pod; its Deployment makes the next one.
        ("", "pods", "delete"),
        ("", "services", "get"),
        ("", "services", "list"),
        ("", "services", "watch"),
        ("", "pods/log", "get"),
        # SPDY port-forwards are POSTs (create); WebSocket ones GETs that need get and create.
        ("", "pods/portforward", "get"),
        ("", "pods/portforward", "create"),
    }


def test_pipeline_role_manages_testenvironments_and_is_bound_by_nobody(default: list[Doc]) -> None:
    pipeline = one(default, "ClusterRole", "pipeline")
    assert rules(pipeline) == {
        *((GROUP, PLURAL, verb) for verb in ("create", "get", "list", "watch", "patch", "delete")),
        *(("", "events", verb) for verb in ("get", "list", "watch")),
        *((GROUP, POOL_PLURAL, verb) for verb in ("get", "list", "watch")),  # reads pools, makes none
    }
    # No pod rights: a pipeline reaches pods only through the operator's per-worker RoleBindings.
    # And the chart binds it to nobody: an admin binds it per pipeline, per namespace.
    name = pipeline["metadata"]["name"]
    assert [d for d in default if d.get("roleRef", {}).get("name") == name] == []


# -- names --------------------------------------------------------------------------------------


def _names_and_labels(docs: list[Doc]) -> Iterator[tuple[str, str]]:
    for doc in docs:
        yield "name", doc["metadata"]["name"]
        for key, value in doc["metadata"].get("labels", {}).items():
            yield key, value
        template = doc.get("spec", {}).get("template", {}).get("metadata", {})
        for key, value in template.get("labels", {}).items():
            yield key, value
        for ref in [doc.get("roleRef", {}), *doc.get("subjects", [])]:
            if ref.get("name"):
                yield "reference", ref["name"]


@pytest.mark.parametrize(
    ("release", "values"),
    [
        ("r" * 53, {}),  # the longest release name helm allows
        ("testenv-operator", {"fullnameOverride": "f" * 80}),
        ("ci", {"nameOverride": "n" * 70}),
        ("r" * 53, EDGE_VALUES),
    ],
    ids=["long release", "long fullnameOverride", "long nameOverride", "edge values"],
)
def test_names_and_labels_fit_in_63_characters(release: str, values: dict[str, Any]) -> None:
    docs = render(values, release=release)
    for key, value in _names_and_labels(docs):
        assert len(value) <= 63, (key, value)
        assert (NAME if key in ("name", "reference") else LABEL_VALUE).match(value), (key, value)
    access = env_of(docs)["TESTENV_ACCESS_CLUSTERROLE"]
    assert access == one(docs, "ClusterRole", "worker-access")["metadata"]["name"]


def test_cut_names_of_two_long_releases_still_differ() -> None:
    first = render(release="a" * 50 + "one")
    second = render(release="a" * 50 + "two")
    for component in ("operator", "worker-access", "pipeline"):
        assert (
            one(first, "ClusterRole", component)["metadata"]["name"]
            != one(second, "ClusterRole", component)["metadata"]["name"]
        )


# -- values: schema, impossible combinations, alternatives --------------------------------------


@pytest.mark.parametrize(
    ("values", "where", "why"),
    [
        (
            {"limits": {"maxWorkersPerEnvironment": 0}},
            "/limits/maxWorkersPerEnvironment",
            "minimum: got 0, want 1",
        ),
        ({"limits": {"maxEnvironmentsPerNamespace": 5000}}, "/limits/maxEnvironmentsPerNamespace", "maximum"),
        ({"limits": {"workerMemory": "lots"}}, "/limits/workerMemory", "does not match pattern"),
        ({"logLevel": "VERBOSE"}, "/logLevel", "value must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR'"),
        ({"replicaCount": 2}, "at ''", "additional properties 'replicaCount' not allowed"),
        ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0", "'Team_A' does not match pattern"),
        ({"watchNamespaces": ["ci", "ci"]}, "/watchNamespaces", "items at 0 and 1 are equal"),
        (
            {"serviceImages": {"mongo": "mongo:7"}},
            "/serviceImages",
            "additional properties 'mongo' not allowed",
        ),
        ({"serviceImages": {"redis": "Not A/Ref"}}, "/serviceImages/redis", "does not match pattern"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy", "value must be one of"),
        ({"image": {"digest": "sha256:abc"}}, "/image/digest", "does not match pattern"),
        ({"livenessPort": 80}, "/livenessPort", "minimum: got 80, want 1,024"),
        ({"metrics": {"port": 80}}, "/metrics/port", "minimum: got 80, want 1,024"),
        ({"metrics": {"enabled": "yes"}}, "/metrics/enabled", "got string, want boolean"),
        (
            {"metrics": {"serviceMonitor": {"interval": "half a minute"}}},
            "/metrics/serviceMonitor/interval",
            "does not match pattern",
        ),
        ({"serviceAccount": {"create": "yes"}}, "/serviceAccount/create", "got string, want boolean"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_schema_refuses_a_wrong_value_naming_it(values: dict[str, Any], where: str, why: str) -> None:
    message = refusal(values)
    assert "values don't meet the specifications of the schema" in message
    assert f"at '{where}'" in message if not where.startswith("at ") else where in message
    assert why in message, message


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"serviceAccount": {"create": False}}, "serviceAccount.create=false needs serviceAccount.name"),
        ({"workerAccess": {"create": False}}, "workerAccess.create=false needs workerAccess.name"),
        (
            {"workerAccess": {"name": "shared"}, "pipelineRole": {"name": "shared"}},
            "workerAccess.name and pipelineRole.name must differ",
        ),
        (
            {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}},
            "metrics.serviceMonitor.enabled needs metrics.enabled",
        ),
        ({"metrics": {"port": 8080}}, "metrics.port and livenessPort must differ"),
    ],
    ids=[
        "no service account",
        "no worker-access role",
        "one name for two roles",
        "a ServiceMonitor without metrics",
        "one port for two endpoints",
    ],
)
def test_impossible_combinations_fail_with_what_to_change(values: dict[str, Any], message: str) -> None:
    assert message in refusal(values)


def test_existing_service_account_and_worker_access_role_are_used() -> None:
    docs = render(
        {
            "serviceAccount": {"create": False, "name": "platform-bot"},
            "workerAccess": {"create": False, "name": "ci-port-forward"},
        }
    )
    assert not [d for d in docs if d["kind"] == "ServiceAccount"]
    assert not [
        d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker-access"
    ]
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "platform-bot"
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["name"] == "platform-bot"
    assert env_of(docs)["TESTENV_ACCESS_CLUSTERROLE"] == "ci-port-forward"
    bind = next(r for r in one(docs, "ClusterRole", "operator")["rules"] if r.get("resourceNames"))
    assert bind["resourceNames"] == ["ci-port-forward"]


def test_roles_can_be_left_to_the_admin() -> None:
    docs = render({"rbac": {"create": False}, "pipelineRole": {"create": False}})
    assert sorted(d["kind"] for d in docs) == ["ClusterRole", "Deployment", "Service", "ServiceAccount"]
    assert one(docs, "ClusterRole")["metadata"]["labels"]["app.kubernetes.io/component"] == "worker-access"


@pytest.mark.parametrize(
    ("image", "reference"),
    [
        ({"tag": "1.2.3"}, "testenv-operator:1.2.3"),
        ({"digest": "sha256:" + "ab" * 32}, "testenv-operator@sha256:" + "ab" * 32),
        ({"tag": "1.2.3", "digest": "sha256:" + "ab" * 32}, "testenv-operator:1.2.3@sha256:" + "ab" * 32),
    ],
    ids=["tag", "digest", "tag and digest"],
)
def test_image_reference(image: dict[str, str], reference: str) -> None:
    assert container(render({"image": image}))["image"] == reference


def test_pod_labels_cannot_break_the_selector() -> None:
    deployment = one(render({"podLabels": {"app.kubernetes.io/name": "other", "team": "ci"}}), "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels["team"] == "ci"


def _documented_keys(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, child in node.get("properties", {}).items():
        assert child.get("description"), f"{prefix}{key} has no description in values.schema.json"
        yield f"{prefix}{key}"
        if child.get("type") == "object" and "properties" in child:
            yield from _documented_keys(child, f"{prefix}{key}.")


def _value_keys(node: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, child in node.items():
        yield f"{prefix}{key}"
        sub = schema["properties"].get(key, {})
        if isinstance(child, dict) and "properties" in sub:
            yield from _value_keys(child, sub, f"{prefix}{key}.")


def test_every_value_is_documented_and_in_the_schema() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = _schema()
    assert schema["additionalProperties"] is False
    assert set(_value_keys(values, schema)) == set(_documented_keys(schema)) - {"global"}
    # ... and commented in values.yaml, where users read them.
    lines = (CHART / "values.yaml").read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z][A-Za-z0-9]*:", line):
            previous = next(p for p in reversed(lines[:number]) if p.strip())
            assert previous.strip().startswith("#"), f"values.yaml line {number + 1} has no comment: {line}"


# -- NOTES, CRD copy, versions ------------------------------------------------------------------


def _notes(values: dict[str, Any] | None = None) -> str:
    """NOTES.txt as helm renders it. `helm install --dry-run` would need a reachable cluster, and
    `helm template` skips NOTES, so a scratch copy of the chart renders it with helm's own engine
    (tpl, which sees the chart's named templates) inside an extra template."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / CHART.name
        shutil.copytree(CHART, copy)
        shutil.copy(CHART / "templates" / "NOTES.txt", copy / "notes-under-test.txt")
        (copy / "templates" / "notes-under-test.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
            'data: {notes: {{ tpl (.Files.Get "notes-under-test.txt") . | quote }}}\n'
        )
        args = ["template", RELEASE, str(copy), "-n", NAMESPACE, "--kube-version", KUBE_VERSION]
        result = _with_values(values, *args, "--show-only", "templates/notes-under-test.yaml")
    assert result.returncode == 0, result.stderr
    notes: str = yaml.safe_load(result.stdout)["data"]["notes"]
    return notes


def test_notes_show_a_first_testenvironment_the_operator_accepts() -> None:
    notes = _notes()
    heredoc = notes.split("<<'YAML'\n", 1)[1].split("\nYAML\n", 1)[0]
    manifest = yaml.safe_load(heredoc.replace("YOUR-PIPELINE-SA", "pipeline"))
    assert manifest["apiVersion"] == f"{GROUP}/{VERSION}"
    assert manifest["kind"] == KIND
    assert validate(manifest["spec"], Settings()) == []
    assert "--clusterrole=testenv-operator-pipeline" in notes
    assert "kubectl -n testenv-system rollout status deployment/testenv-operator" in notes
    assert "every namespace" in notes
    assert "these namespaces only: ci-a, ci-b" in _notes({"watchNamespaces": ["ci-a", "ci-b"]})


def test_chart_ships_exactly_the_crds_and_make_sync_crds_updates_them() -> None:
    sources = [
        ROOT / "crds" / "testenv.dev_testenvironments.yaml",
        ROOT / "crds" / "testenv.dev_testenvironmentpools.yaml",
    ]
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(s.name for s in sources)
    makefile = (ROOT / "Makefile").read_text()
    for source, variable in zip(sources, ("CRD_COPIES", "POOL_CRD_COPIES"), strict=True):
        assert (CHART / "crds" / source.name).read_bytes() == source.read_bytes(), "run `make sync-crds`"
        copies = re.search(rf"^{variable} :=(.*)$", makefile, re.MULTILINE)
        assert copies, f"no {variable} line in the Makefile"
        assert f"charts/testenv-operator/crds/{source.name}" in copies.group(1).split()


def test_pools_render_as_testenvironmentpools_and_must_be_watched() -> None:
    pool = {"name": "ci", "namespace": "ci-a", "size": 4, "services": [{"name": "cache", "type": "redis"}]}
    result = _with_values(
        {"pools": [pool]}, "template", RELEASE, str(CHART), "-n", NAMESPACE, "--kube-version", KUBE_VERSION
    )
    assert result.returncode == 0, result.stderr
    (rendered,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == POOL_KIND]
    assert rendered["metadata"]["namespace"] == "ci-a"
    assert rendered["spec"] == {"size": 4, "services": pool["services"]}
    refused = _with_values(
        {"pools": [pool], "watchNamespaces": ["ci-b"]},
        "template",
        RELEASE,
        str(CHART),
        "-n",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
    )
    assert refused.returncode != 0
    assert "pool ci is in namespace ci-a, which watchNamespaces leaves out" in refused.stderr


def _chart() -> dict[str, Any]:
    chart: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return chart


def test_app_version_is_the_package_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _chart()["appVersion"] == project["version"]


# -- the Dockerfile -----------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with continuation lines joined and comments dropped."""
    joined: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in joined]


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, arguments in stage:
        if instruction == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(arguments))
    return env


def test_base_image_is_pinned_to_a_patch_release_the_package_supports() -> None:
    args = dict(a.split("=", 1) for i, a in _instructions() if i == "ARG" and "=" in a)
    base = args["PYTHON_IMAGE"]
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-([a-z]+)(@sha256:[0-9a-f]{64})?", base)
    assert match, f"{base} is not an exact python:X.Y.Z-slim-<debian> image"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(p) for p in requires.removeprefix(">=").split("."))
    assert (int(match[1]), int(match[2])) >= minimum
    assert [a.split()[0] for i, a in _instructions() if i == "FROM"] == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def test_image_runs_as_the_non_root_user_the_chart_expects(default: list[Doc]) -> None:
    final = _stages()[-1]
    users = [a for i, a in final if i == "USER"]
    assert users, "the final stage sets no USER"
    uid, gid = (int(part) for part in users[-1].split(":"))
    assert uid != 0
    assert gid != 0
    pod = one(default, "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (uid, gid)


def test_cmd_runs_the_operator_with_its_liveness_endpoint(default: list[Doc]) -> None:
    final = _stages()[-1]
    (cmd,) = [json.loads(a) for i, a in final if i == "CMD"]
    assert cmd == ["python", "-m", "testenv_operator"]
    env = _env(final)
    assert env["PATH"].startswith("/opt/testenv/bin:")  # `python` is the virtual environment's
    assert env["TESTENV_LIVENESS"] == env_of(default)["TESTENV_LIVENESS"] == "http://0.0.0.0:8080/healthz"
    assert ("EXPOSE", "8080") in final
    assert env["TESTENV_METRICS"] == env_of(default)["TESTENV_METRICS"] == "http://0.0.0.0:8081/metrics"
    assert ("EXPOSE", "8081") in final
    assert (ROOT / "operator" / "testenv_operator" / "__main__.py").is_file()


def test_build_stage_copies_what_the_package_build_needs() -> None:
    build, final = _stages()
    copied = [a.split()[:-1] for i, a in build if i == "COPY"]
    sources = {Path(src.rstrip("/")) for parts in copied for src in parts}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {Path("pyproject.toml"), Path(project["project"]["readme"])}
    needed |= {Path(folder) for folder in project["tool"]["setuptools"]["packages"]["find"]["where"]}
    assert needed <= sources, f"not copied: {needed - sources}"
    assert all((ROOT / source).exists() for source in sources)
    # .dockerignore keeps everything else out, and must let each of these in.
    ignore = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert ignore[0] == "*"
    admitted = {Path(line[1:]) for line in ignore if line.startswith("!")}
    # Each source is let in by name or by a folder it is in (operator/requirements.txt by !operator).
    left_out = {s for s in sources if not admitted & {s, *s.parents}}
    assert not left_out, f".dockerignore keeps these out: {left_out}"
    # The final stage takes only the installed virtual environment, not the sources.
    assert [a for i, a in final if i == "COPY"] == ["--from=build /opt/testenv /opt/testenv"]
    # The dependencies from the hashed list, then the checkout itself without them.
    assert any(i == "RUN" and "--require-hashes" in a and "requirements.txt" in a for i, a in build)
    assert any(i == "RUN" and "--no-deps --no-build-isolation . " in a for i, a in build)


def test_the_guide_lists_the_operators_default_images() -> None:
    guide = (ROOT / "docs" / "shared-ci-cluster.md").read_text()
    for kind, image in DEFAULT_IMAGES.items():
        assert f"| {kind} | `{image}` |" in guide, f"docs/shared-ci-cluster.md: default image of {kind}"
    assert f"`{FAULT_PROXY_IMAGE}` |" in guide, "docs/shared-ci-cluster.md: the fault proxy's image"


def test_the_fault_proxy_image_reaches_the_operator() -> None:
    """serviceImages.toxiproxy: the image of the sidecar `faultProxy: true` adds (a mirror, say)."""
    mirror = "mirror.example.com/toxiproxy:2.5.0"
    env = env_of(render({"serviceImages": {"toxiproxy": mirror}}))
    assert env["TESTENV_IMAGE_TOXIPROXY"] == mirror
    assert Settings.from_env(env).images == {"toxiproxy": mirror}
