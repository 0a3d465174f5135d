"""The NetworkPolicy engine of our offline kind node: kube-router's firewall controller alone.

Our node has a static CNI (kindnetd cannot be built here) and this kind of host's kernel lacks
the nftables queue that kindnet's policy engine needs, so nothing would enforce a worker
namespace's NetworkPolicies. kube-router's firewall (iptables + ipset, no BGP, no IPVS proxy)
does, and its image is embedded in the node image: installing it pulls nothing. It runs as a
DaemonSet in kube-system, applied from inside the node with the node's own kubectl and admin
kubeconfig (as kind applies its default CNI), so the host needs no kubectl for it.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from testenv_harness.ground.errors import ClusterError
from testenv_harness.provision import imagebuild

NAME = "kube-router"
NAMESPACE = "kube-system"
#: kind's default Service subnet (we never change it); kube-router must know ClusterIPs apart.
SERVICE_SUBNET = "10.96.0.0/16"
#: kube-router's /healthz: 200 once every controller it runs has reported in.
HEALTH_PORT = 20244
_LABELS = {"k8s-app": NAME, "app.kubernetes.io/managed-by": "kube-testenv"}

Obj = dict[str, Any]


def _rbac() -> list[Obj]:
    """What the firewall controller reads: its informers list and watch these (kube-router starts
    the Service, Endpoints and EndpointSlice informers even when the proxy is off)."""
    read = ["get", "list", "watch"]
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": NAME, "labels": _LABELS},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["namespaces", "pods", "nodes", "services", "endpoints"],
                "verbs": read,
            },
            {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": read},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
        ],
    }
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": _LABELS},
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": NAME, "labels": _LABELS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
        "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}],
    }
    return [account, role, binding]


def _host_path(name: str, path: str, kind: str = "") -> Obj:
    source: Obj = {"path": path}
    if kind:
        source["type"] = kind
    return {"name": name, "hostPath": source}


def daemonset(image: str) -> Obj:
    """kube-router with only its firewall on, in the node's network namespace, privileged (it
    programs the node's iptables and ipsets), sharing the node's xtables lock with kube-proxy."""
    container = {
        "name": NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",  # embedded in the node: never pulled
        "args": [
            "--run-firewall=true",
            "--run-router=false",
            "--run-service-proxy=false",
            f"--service-cluster-ip-range={SERVICE_SUBNET}",
            f"--health-port={HEALTH_PORT}",
        ],
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "securityContext": {"privileged": True},
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": HEALTH_PORT, "host": "127.0.0.1"},
            "periodSeconds": 2,
        },
        "resources": {"requests": {"cpu": "20m", "memory": "48Mi"}},
        "volumeMounts": [
            {"name": "lib-modules", "mountPath": "/lib/modules", "readOnly": True},
            {"name": "xtables-lock", "mountPath": "/run/xtables.lock"},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": _LABELS},
        "spec": {
            "selector": {"matchLabels": {"k8s-app": NAME}},
            "template": {
                "metadata": {"labels": _LABELS},
                "spec": {
                    "serviceAccountName": NAME,
                    "priorityClassName": "system-node-critical",
                    "hostNetwork": True,
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [container],
                    "volumes": [
                        _host_path("lib-modules", "/lib/modules"),
                        _host_path("xtables-lock", "/run/xtables.lock", "FileOrCreate"),
                    ],
                },
            },
        },
    }


def manifests(image: str) -> list[Obj]:
    return [*_rbac(), daemonset(image)]


def image() -> str:
    """Our kube-router image, as the node image embeds it (its content-keyed reference)."""
    return imagebuild.reference(NAME)


def node_kubectl(node: str, *args: str, stdin: str = "", timeout: float = 60) -> str:
    """kubectl inside the kind node container `node`, as cluster admin; ClusterError if it fails."""
    command = ["docker", "exec", "-i", node, "kubectl", "--kubeconfig=/etc/kubernetes/admin.conf", *args]
    try:
        result = subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(
            f"`kubectl {' '.join(args[:4])}` in {node} did not finish in {timeout:.0f}s"
        ) from exc
    if result.returncode != 0:
        raise ClusterError(
            f"`kubectl {' '.join(args[:4])}` in {node} failed (exit {result.returncode}): "
            f"{result.stderr.strip()[-2000:]}"
        )
    return result.stdout


def install(node: str, timeout: float = 120) -> None:
    """Apply the engine in the kind node container `node` and wait until its pod reports healthy."""
    listing = {"apiVersion": "v1", "kind": "List", "items": manifests(image())}
    node_kubectl(node, "apply", "-f", "-", stdin=json.dumps(listing))
    try:
        node_kubectl(
            node,
            "-n",
            NAMESPACE,
            "rollout",
            "status",
            f"daemonset/{NAME}",
            f"--timeout={timeout:.0f}s",
            timeout=timeout + 15,
        )
    except ClusterError as exc:
        raise ClusterError(
            f"the NetworkPolicy engine ({NAME} in {NAMESPACE}) did not become ready in {node}: {exc}\n"
            f"see `docker exec {node} kubectl --kubeconfig=/etc/kubernetes/admin.conf -n {NAMESPACE} "
            f"logs daemonset/{NAME}`"
        ) from exc
