from __future__ import annotations

from testenv_api import LABEL_OWNER_UID, LABEL_RUNNER, LABEL_WORKER
from testenv_operator.catalog import GENERIC, STEP_DOWN, ServiceContext, render_service
from testenv_operator.manifests import Owner, guards, namespace, referenced_secrets, workload
from testenv_operator.settings import Fences

OWNER = Owner("team", "env", "uid-1")


def test_namespace_carries_ownership_worker_and_pod_security_labels() -> None:
    labels = namespace(OWNER, "te-x-w3", 3)["metadata"]["labels"]
    assert labels[LABEL_OWNER_UID] == "uid-1"
    assert labels[LABEL_WORKER] == "3"
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"


def test_guards_fence_the_namespace() -> None:
    quota, limits, policy = guards(
        OWNER, "ns", 0, 3, Fences(worker_cpu="4", worker_memory="8Gi", worker_ephemeral_storage="6Gi")
    )
    hard = quota["spec"]["hard"]
    assert hard["limits.cpu"] == "4"
    assert hard["pods"] == "8"
    assert hard["limits.ephemeral-storage"] == hard["requests.ephemeral-storage"] == "6Gi"
    (container,) = limits["spec"]["limits"]
    assert container["type"] == "Container"
    assert container["default"]["ephemeral-storage"] == "1Gi"
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["spec"]["ingress"]
    same_namespace, runners = ingress["from"]
    assert same_namespace == {"podSelector": {}}, "pods of the same namespace"
    # ... and the tenant's own test runners (a CI job in the cluster connecting directly), no one else.
    assert runners == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team"}},
        "podSelector": {"matchLabels": {LABEL_RUNNER: "true"}},
    }


def test_egress_reaches_the_own_namespace_and_cluster_dns_only() -> None:
    *_, policy = guards(OWNER, "ns", 0, 1, Fences(worker_cpu="1", worker_memory="1Gi"))
    own, dns = policy["spec"]["egress"]
    assert own == {"to": [{"podSelector": {}}]}
    (peer,) = dns["to"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}
    assert peer["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert sorted(p["protocol"] for p in dns["ports"]) == ["TCP", "UDP"]
    assert {p["port"] for p in dns["ports"]} == {53}
    # No ipBlock anywhere: the metadata address (169.254.169.254) and the API server are not peers.
    assert "ipBlock" not in str(policy["spec"])

    *_, open_policy = guards(
        OWNER, "ns", 0, 1, Fences(worker_cpu="1", worker_memory="1Gi", worker_egress="open")
    )
    assert open_policy["spec"]["policyTypes"] == ["Ingress"]
    assert "egress" not in open_policy["spec"]


def _pod_of(service: dict[str, object]) -> dict[str, object]:
    plan = render_service(
        service, ServiceContext("ns", {"redis": 1, "kafka": 2, "http": 3}, {"redis": "r:1", "kafka": "k:1"})
    )
    deployment, _ = workload(OWNER, "ns", 0, plan)
    pod: dict[str, object] = deployment["spec"]["template"]["spec"]
    return pod


def test_containers_drop_every_capability_but_what_their_start_up_needs() -> None:
    redis = _pod_of({"name": "redis", "type": "redis"})
    assert redis["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    (container,) = redis["containers"]  # type: ignore[misc]
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"], "add": list(STEP_DOWN)}
    (kafka,) = _pod_of({"name": "kafka", "type": "kafka"})["containers"]  # type: ignore[misc]
    assert kafka["securityContext"]["capabilities"] == {"drop": ["ALL"]}  # runs as its own user
    custom = {
        "name": "web",
        "type": "custom",
        "custom": {"image": "nginx:1", "ports": [{"name": "http", "port": 80}]},
    }
    (web,) = _pod_of(custom)["containers"]  # type: ignore[misc]
    assert web["securityContext"]["capabilities"]["add"] == [*GENERIC, "NET_BIND_SERVICE"]
    for kept in web["securityContext"]["capabilities"]["add"]:
        assert kept not in ("NET_RAW", "SYS_ADMIN", "MKNOD", "SYS_CHROOT")


def test_referenced_secrets_from_env_and_localstack_token() -> None:
    services = [
        {
            "name": "a",
            "type": "redis",
            "env": [
                {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "k"}}},
                {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "j"}}},
            ],
        },
        {"name": "b", "type": "localstack", "localstack": {"authTokenSecretRef": {"name": "ls", "key": "t"}}},
    ]
    assert referenced_secrets(services) == {"ls": ["t"], "s1": ["j", "k"]}
