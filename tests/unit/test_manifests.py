from __future__ import annotations

import json

from testenv_api import (
    ANNOTATION_FAULT_PROXIES,
    FAULT_PROXY_ADMIN_PORT,
    FAULT_PROXY_IMAGE_KEY,
    FAULT_PROXY_LISTEN_BASE,
    FAULT_PROXY_PORT_NAME,
    LABEL_OWNER_UID,
    LABEL_RUNNER,
    LABEL_WORKER,
    fault_proxies,
)
from testenv_operator.catalog import FAULT_PROXY_IMAGE, GENERIC, STEP_DOWN, ServiceContext, render_service
from testenv_operator.manifests import (
    FAULT_PROXY_CONTAINER,
    Obj,
    Owner,
    guards,
    namespace,
    referenced_secrets,
    workload,
)
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


def _workload_of(service: dict[str, object], images: dict[str, str] | None = None) -> tuple[Obj, Obj]:
    ports = {name: 20000 + i for i, name in enumerate(("redis", "kafka", "http", "admin"))}
    plan = render_service(
        service, ServiceContext("ns", ports, {"redis": "r:1", "kafka": "k:1", **(images or {})})
    )
    deployment, svc = workload(OWNER, "ns", 0, plan)
    return deployment, svc


def test_without_fault_proxy_the_pod_has_one_container_and_the_service_targets_it_by_name() -> None:
    deployment, service = _workload_of({"name": "redis", "type": "redis", "faultProxy": False})
    template = deployment["spec"]["template"]
    assert [c["name"] for c in template["spec"]["containers"]] == ["redis"]
    assert "volumes" not in template["spec"]
    assert ANNOTATION_FAULT_PROXIES not in template["metadata"]["annotations"]
    assert service["spec"]["ports"] == [
        {"name": "redis", "port": 6379, "targetPort": "redis", "protocol": "TCP"}
    ]


def test_a_fault_proxy_sidecar_sits_between_the_service_and_the_container() -> None:
    deployment, service = _workload_of({"name": "cache", "type": "redis", "faultProxy": True})
    template = deployment["spec"]["template"]
    redis, proxy = template["spec"]["containers"]
    # The service's own container is as without the proxy: the harness forwards pod port 6379 to it.
    assert redis["ports"] == [{"name": "redis", "containerPort": 6379, "protocol": "TCP"}]
    assert proxy["name"] == FAULT_PROXY_CONTAINER
    assert proxy["image"] == FAULT_PROXY_IMAGE
    assert proxy["ports"][0] == {
        "name": FAULT_PROXY_PORT_NAME,
        "containerPort": FAULT_PROXY_ADMIN_PORT,
        "protocol": "TCP",
    }
    assert proxy["ports"][1] == {"containerPort": FAULT_PROXY_LISTEN_BASE, "protocol": "TCP"}
    assert "-host=0.0.0.0" in proxy["args"]
    assert f"-port={FAULT_PROXY_ADMIN_PORT}" in proxy["args"]
    # In-cluster clients dial the Service's port 6379 and land on the proxy, which forwards to redis.
    assert service["spec"]["ports"] == [
        {"name": "redis", "port": 6379, "targetPort": FAULT_PROXY_LISTEN_BASE, "protocol": "TCP"}
    ]
    config = json.loads(template["metadata"]["annotations"][ANNOTATION_FAULT_PROXIES])
    assert config == [
        {
            "name": "redis",
            "listen": f"0.0.0.0:{FAULT_PROXY_LISTEN_BASE}",
            "upstream": "127.0.0.1:6379",
            "enabled": True,
        }
    ]
    # Its -config file is that annotation, through a downward API volume.
    (volume,) = template["spec"]["volumes"]
    (item,) = volume["downwardAPI"]["items"]
    assert item["fieldRef"]["fieldPath"] == f"metadata.annotations['{ANNOTATION_FAULT_PROXIES}']"
    (mount,) = proxy["volumeMounts"]
    assert mount["name"] == volume["name"]
    assert mount["readOnly"] is True
    assert any(arg == f"-config={mount['mountPath']}/{item['path']}" for arg in proxy["args"])
    # Ready once its proxy listens; no privilege, its own requests and limits (the quota needs them).
    assert proxy["readinessProbe"]["tcpSocket"] == {"port": FAULT_PROXY_LISTEN_BASE}
    context = proxy["securityContext"]
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["runAsNonRoot"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert set(proxy["resources"]["requests"]) == set(proxy["resources"]["limits"]) == {"cpu", "memory"}


def test_every_service_port_gets_a_proxy_named_after_it_kafkas_internal_listener_too() -> None:
    deployment, service = _workload_of({"name": "kafka", "type": "kafka", "faultProxy": True})
    config = json.loads(deployment["spec"]["template"]["metadata"]["annotations"][ANNOTATION_FAULT_PROXIES])
    assert [(p["name"], p["upstream"]) for p in config] == [
        ("kafka", "127.0.0.1:9094"),
        ("internal", "127.0.0.1:9092"),
    ]
    targets = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert targets == {p["name"]: int(p["listen"].rsplit(":", 1)[1]) for p in config}
    # The contract the harness reads: the same proxies, computed from the spec alone.
    assert [
        (p.name, p.port, p.listen)
        for p in fault_proxies({"name": "kafka", "type": "kafka", "faultProxy": True})
    ] == [
        (p["name"], int(p["upstream"].rsplit(":", 1)[1]), int(p["listen"].rsplit(":", 1)[1])) for p in config
    ]


def test_proxy_listen_ports_step_around_the_services_own_ports() -> None:
    custom = {
        "image": "acme/api:1",
        "ports": [
            {"name": "http", "port": FAULT_PROXY_LISTEN_BASE},
            {"name": "admin", "port": FAULT_PROXY_LISTEN_BASE + 1},
        ],
    }
    _deployment, service = _workload_of(
        {"name": "api", "type": "custom", "custom": custom, "faultProxy": True}
    )
    listens = [p["targetPort"] for p in service["spec"]["ports"]]
    assert listens == [FAULT_PROXY_LISTEN_BASE + 2, FAULT_PROXY_LISTEN_BASE + 3]


def test_the_fault_proxy_image_is_the_operators_setting_when_given() -> None:
    deployment, _ = _workload_of(
        {"name": "cache", "type": "redis", "faultProxy": True},
        {FAULT_PROXY_IMAGE_KEY: "mirror.example/toxiproxy:2.5.0"},
    )
    _, proxy = deployment["spec"]["template"]["spec"]["containers"]
    assert proxy["image"] == "mirror.example/toxiproxy:2.5.0"


def test_the_network_policy_needs_no_rule_for_the_proxy() -> None:
    """Clients of the same namespace reach any port of its pods (the proxy's too), and the proxy
    reaches the service on the pod's loopback address, which no NetworkPolicy governs."""
    _, _, policy = guards(OWNER, "ns", 0, 1, Fences(worker_cpu="1", worker_memory="1Gi"))
    (ingress,) = policy["spec"]["ingress"]
    assert "ports" not in ingress
