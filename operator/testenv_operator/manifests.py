"""Kubernetes objects for one worker namespace, as plain dicts ready for server-side apply."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from testenv_api import (
    ANNOTATION_FAULT_PROXIES,
    ANNOTATION_SERVICE_TYPE,
    FAULT_PROXY_ADMIN_PORT,
    FAULT_PROXY_PORT_NAME,
    LABEL_MANAGED_BY,
    LABEL_OWNER_NAME,
    LABEL_OWNER_NAMESPACE,
    LABEL_OWNER_UID,
    LABEL_RUNNER,
    LABEL_SERVICE,
    LABEL_WORKER,
    MANAGED_BY,
)
from testenv_operator.catalog import (
    FAULT_PROXY_LIMITS,
    FAULT_PROXY_REQUESTS,
    Probe,
    ServicePlan,
    type_secret_refs,
)
from testenv_operator.settings import Fences

Obj = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Owner:
    """The TestEnvironment a worker namespace belongs to."""

    namespace: str
    name: str
    uid: str

    def labels(self) -> dict[str, str]:
        return {
            LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_OWNER_UID: self.uid,
            LABEL_OWNER_NAME: self.name[:63],
            LABEL_OWNER_NAMESPACE: self.namespace,
        }


#: Every container's ephemeral-storage limit (its writable layer and logs), from the LimitRange:
#: `resources` cannot set one (the CRD allows cpu and memory only).
CONTAINER_EPHEMERAL_STORAGE = "1Gi"
#: Where cluster DNS answers: kube-system's CoreDNS pods (kubeadm, kind and most managed clusters).
_DNS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}


def _meta(name: str, labels: Mapping[str, str], namespace: str | None = None) -> Obj:
    meta: Obj = {"name": name, "labels": dict(labels)}
    if namespace:
        meta["namespace"] = namespace
    return meta


def namespace(owner: Owner, name: str, index: int) -> Obj:
    labels = {
        **owner.labels(),
        LABEL_WORKER: str(index),
        # Official service images run as root, so `baseline` is the strictest level they pass.
        "pod-security.kubernetes.io/enforce": "baseline",
        "pod-security.kubernetes.io/audit": "restricted",
    }
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(name, labels)}


def _network_policy(labels: Mapping[str, str], ns: str, tenant: str, open_egress: bool) -> Obj:
    """Pods of the worker reach each other; in, only the tenant's test runners besides; out, cluster
    DNS and nothing else.

    A test runner is a pod of the environment's own namespace (`tenant`) labelled
    `testenv.dev/runner=true`: a CI job running inside the cluster that connects to the Services
    directly. A test service cannot reach another tenant, the API server, kubelets or a cloud's
    metadata address, unless the operator is set to leave egress open (TESTENV_WORKER_EGRESS).
    """
    runners = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": tenant}},
        "podSelector": {"matchLabels": {LABEL_RUNNER: "true"}},
    }
    spec: Obj = {
        "podSelector": {},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {}}, runners]}],
    }
    if not open_egress:
        dns = [{"protocol": protocol, "port": 53} for protocol in ("UDP", "TCP")]
        spec["policyTypes"] = ["Ingress", "Egress"]
        spec["egress"] = [{"to": [{"podSelector": {}}]}, {"to": [_DNS_PEER], "ports": dns}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta("testenv-same-namespace-only", labels, ns),
        "spec": spec,
    }


def guards(owner: Owner, ns: str, index: int, services: int, fences: Fences) -> list[Obj]:
    """Quota, default limits and the network fence every worker namespace gets."""
    labels = {**owner.labels(), LABEL_WORKER: str(index)}
    return [
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": _meta("testenv-worker", labels, ns),
            "spec": {
                "hard": {
                    "limits.cpu": fences.worker_cpu,
                    "limits.memory": fences.worker_memory,
                    "requests.cpu": fences.worker_cpu,
                    "requests.memory": fences.worker_memory,
                    "limits.ephemeral-storage": fences.worker_ephemeral_storage,
                    "requests.ephemeral-storage": fences.worker_ephemeral_storage,
                    # Room for a Recreate rollout of every service at once.
                    "pods": str(2 * services + 2),
                }
            },
        },
        {
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": _meta("testenv-worker", labels, ns),
            "spec": {
                "limits": [
                    {
                        "type": "Container",
                        "default": {
                            "cpu": "500m",
                            "memory": "256Mi",
                            "ephemeral-storage": CONTAINER_EPHEMERAL_STORAGE,
                        },
                        "defaultRequest": {"cpu": "50m", "memory": "64Mi", "ephemeral-storage": "64Mi"},
                    }
                ]
            },
        },
        _network_policy(labels, ns, owner.namespace, fences.open_egress),
    ]


def _container(plan: ServicePlan) -> Obj:
    container: Obj = {
        "name": plan.name,
        "image": plan.image,
        "ports": [
            {"name": n, "containerPort": p, "protocol": "TCP"} for n, p in plan.ports + plan.cluster_ports
        ],
        "env": [dict(e) for e in plan.env],
        "resources": {"requests": dict(plan.requests), "limits": dict(plan.limits)},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {
                "drop": ["ALL"],
                **({"add": list(plan.capabilities)} if plan.capabilities else {}),
            },
        },
    }
    if plan.command:
        container["command"] = list(plan.command)
    if plan.args:
        container["args"] = list(plan.args)
    if plan.readiness:
        container["readinessProbe"] = plan.readiness.to_k8s()
    for variable, secret, key in plan.secret_env:
        container["env"].append(
            {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        )
    return container


#: The fault proxy sidecar's container name, and where its `-config` file is mounted.
FAULT_PROXY_CONTAINER = "toxiproxy"
_FAULT_PROXY_CONFIG_DIR = "/etc/testenv-toxiproxy"
_FAULT_PROXY_CONFIG_FILE = "proxies.json"
#: The user the sidecar runs as (Toxiproxy needs no privilege: its ports are above 1024).
_FAULT_PROXY_USER = 65532


def fault_proxy_config(plan: ServicePlan) -> str:
    """Toxiproxy's `-config` file: a proxy per Service port, from its listen port in the pod to the
    service container's port on the pod's loopback address."""
    return json.dumps(
        [
            {
                "name": p.name,
                "listen": f"0.0.0.0:{p.listen}",
                "upstream": f"127.0.0.1:{p.port}",
                "enabled": True,
            }
            for p in plan.fault_proxies
        ],
        separators=(",", ":"),
    )


def _fault_proxy_container(plan: ServicePlan) -> Obj:
    """Toxiproxy next to the service: its API on FAULT_PROXY_ADMIN_PORT of every interface (the
    harness forwards it; a runner pod may call it), its proxies from the config file. Ready once
    the first proxy listens (the proxies start before the API does)."""
    return {
        "name": FAULT_PROXY_CONTAINER,
        "image": plan.fault_proxy_image,
        # The image's entrypoint is the server (upstream's /toxiproxy, and our build's).
        "args": [
            "-host=0.0.0.0",
            f"-port={FAULT_PROXY_ADMIN_PORT}",
            f"-config={_FAULT_PROXY_CONFIG_DIR}/{_FAULT_PROXY_CONFIG_FILE}",
        ],
        "ports": [
            {"name": FAULT_PROXY_PORT_NAME, "containerPort": FAULT_PROXY_ADMIN_PORT, "protocol": "TCP"},
            *({"containerPort": p.listen, "protocol": "TCP"} for p in plan.fault_proxies),
        ],
        "env": [{"name": "LOG_LEVEL", "value": "warn"}],
        "resources": {"requests": dict(FAULT_PROXY_REQUESTS), "limits": dict(FAULT_PROXY_LIMITS)},
        "readinessProbe": Probe("tcpSocket", port=plan.fault_proxies[0].listen).to_k8s(),
        "volumeMounts": [
            {"name": "testenv-fault-proxy", "mountPath": _FAULT_PROXY_CONFIG_DIR, "readOnly": True}
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": _FAULT_PROXY_USER,
            "runAsGroup": _FAULT_PROXY_USER,
        },
    }


def _service_port(plan: ServicePlan, name: str, port: int) -> Obj:
    """The Service's port `name`: to the container's port, or to its fault proxy's listen port."""
    proxy = next((p for p in plan.fault_proxies if p.name == name), None)
    target: str | int = proxy.listen if proxy else name
    return {"name": name, "port": port, "targetPort": target, "protocol": "TCP"}


def workload(owner: Owner, ns: str, index: int, plan: ServicePlan) -> list[Obj]:
    """A one-replica Deployment and its Service (with `faultProxy`, the Service's ports lead to a
    Toxiproxy sidecar in the pod, which forwards to the service; the pod's own ports stay as they
    are, so the harness's forward reaches the service directly)."""
    labels = {**owner.labels(), LABEL_WORKER: str(index), LABEL_SERVICE: plan.name}
    selector = {LABEL_SERVICE: plan.name, LABEL_OWNER_UID: owner.uid}
    annotations = {ANNOTATION_SERVICE_TYPE: plan.type}
    pod: Obj = {
        # A Service named kafka would inject KAFKA_PORT, which the image reads as a setting.
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 2,
        "containers": [_container(plan)],
    }
    if plan.fault_proxies:
        # The config travels in the pod's own annotation: a changed one rolls the pod, and there is
        # no ConfigMap to keep in step.
        annotations[ANNOTATION_FAULT_PROXIES] = fault_proxy_config(plan)
        pod["containers"].append(_fault_proxy_container(plan))
        pod["volumes"] = [
            {
                "name": "testenv-fault-proxy",
                "downwardAPI": {
                    "items": [
                        {
                            "path": _FAULT_PROXY_CONFIG_FILE,
                            "fieldRef": {"fieldPath": f"metadata.annotations['{ANNOTATION_FAULT_PROXIES}']"},
                        }
                    ]
                },
            }
        ]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(plan.name, labels, ns),
        "spec": {
            "replicas": 1,
            # Two copies of a stateful test service must never run side by side.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(plan.name, labels, ns),
        "spec": {
            "selector": selector,
            "ports": [_service_port(plan, n, p) for n, p in plan.ports + plan.cluster_ports],
        },
    }
    return [deployment, service]


def copied_secret(owner: Owner, ns: str, index: int, source: Obj) -> Obj:
    """A copy of a Secret from the environment's namespace, for env valueFrom references."""
    labels = {**owner.labels(), LABEL_WORKER: str(index)}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(source["metadata"]["name"], labels, ns),
        "type": source.get("type", "Opaque"),
        "data": dict(source.get("data") or {}),
    }


def access_binding(
    owner: Owner, ns: str, index: int, cluster_role: str, subjects: Sequence[Mapping[str, Any]]
) -> Obj:
    """Lets the identities the spec names use this worker namespace, and only this one."""
    rbac_subjects = []
    for subject in subjects:
        entry = {"kind": subject["kind"], "name": subject["name"]}
        if subject["kind"] == "ServiceAccount":
            entry["namespace"] = subject.get("namespace") or owner.namespace
        else:
            entry["apiGroup"] = "rbac.authorization.k8s.io"
        rbac_subjects.append(entry)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta("testenv-access", {**owner.labels(), LABEL_WORKER: str(index)}, ns),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
        "subjects": rbac_subjects,
    }


def referenced_secrets(service_specs: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Secrets in the environment's namespace that the spec reads, with the keys it reads."""
    keys: dict[str, set[str]] = {}
    for spec in service_specs:
        refs = [(env.get("valueFrom") or {}).get("secretKeyRef") for env in spec.get("env") or []]
        refs += type_secret_refs(spec)
        for ref in refs:
            if ref:
                keys.setdefault(ref["name"], set()).add(ref["key"])
    return {name: sorted(names) for name, names in sorted(keys.items())}
