"""Helpers for the Helm chart's integration tests: helm itself, ServiceAccount identities, access checks.

Identities are real: a ServiceAccount's token comes from the TokenRequest API and is written into
a kubeconfig of its own, so the API server authenticates and authorizes that ServiceAccount exactly
as it would a pod's token. No impersonation is involved.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import portforward

from testenv_harness.ground import kube
from testenv_harness.ground.waiting import wait_for
from testenv_harness.provision import toolchain

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "testenv-operator"
#: Kinds the operator creates inside worker namespaces (plus the namespaces), as list calls.
OPERATOR_MADE = {
    "Deployment": lambda api, sel: client.AppsV1Api(api).list_deployment_for_all_namespaces(
        label_selector=sel
    ),
    "Service": lambda api, sel: client.CoreV1Api(api).list_service_for_all_namespaces(label_selector=sel),
    "Secret": lambda api, sel: client.CoreV1Api(api).list_secret_for_all_namespaces(label_selector=sel),
    "ResourceQuota": lambda api, sel: client.CoreV1Api(api).list_resource_quota_for_all_namespaces(
        label_selector=sel
    ),
    "LimitRange": lambda api, sel: client.CoreV1Api(api).list_limit_range_for_all_namespaces(
        label_selector=sel
    ),
    "NetworkPolicy": lambda api, sel: client.NetworkingV1Api(api).list_network_policy_for_all_namespaces(
        label_selector=sel
    ),
    "RoleBinding": lambda api, sel: client.RbacAuthorizationV1Api(api).list_role_binding_for_all_namespaces(
        label_selector=sel
    ),
    "Namespace": lambda api, sel: client.CoreV1Api(api).list_namespace(label_selector=sel),
}


def helm(
    kubeconfig: Path, *args: str, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    cache = toolchain.kube_cache_dir()
    own = {  # helm's caches and settings, and its kube client's discovery cache: ours, not ~/
        "KUBECACHEDIR": str(cache),
        "HELM_CACHE_HOME": str(cache / "helm-cache"),
        "HELM_CONFIG_HOME": str(cache / "helm-config"),
        "HELM_DATA_HOME": str(cache / "helm-data"),
    }
    result = subprocess.run(
        [str(toolchain.binary("helm")), "--kubeconfig", str(kubeconfig), *args],
        env={**os.environ, **own},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


@dataclasses.dataclass(frozen=True)
class Release:
    """An installed release and the names it made (read back from the cluster, not assumed)."""

    name: str
    namespace: str
    kubeconfig: Path
    install_output: str
    deployment: str
    service_account: str
    worker_access_role: str
    pipeline_role: str

    @property
    def operator_user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def operator_env(self, api: client.ApiClient) -> dict[str, str]:
        """The TESTENV_* settings the chart gave the operator container (liveness and metrics left
        out: a local process binds free ports of its own)."""
        deployment = client.AppsV1Api(api).read_namespaced_deployment(self.deployment, self.namespace)
        (container,) = deployment.spec.template.spec.containers
        env = {e.name: e.value for e in container.env}
        env.pop("TESTENV_LIVENESS")
        env.pop("TESTENV_METRICS")
        return env

    def uninstall(self) -> None:
        helm(self.kubeconfig, "uninstall", self.name, "-n", self.namespace, "--wait", "--ignore-not-found")


def install(
    api: client.ApiClient, kubeconfig: Path, name: str, namespace: str, values: dict[str, Any]
) -> Release:
    """`helm install --wait` into `namespace` (created first, with Pod Security `restricted` enforced)."""
    core = client.CoreV1Api(api)
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/warn": "restricted",
    }

    def labelled() -> bool:
        """Create the namespace, or label the one there; False while it is still Terminating."""
        try:
            core.create_namespace({"metadata": {"name": namespace, "labels": labels}})
            return True
        except ApiException as exc:
            if exc.status != 409:
                raise
        try:
            existing = core.read_namespace(namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False  # gone meanwhile: create it next time
            raise
        if existing.metadata.deletion_timestamp:  # still Terminating from an earlier run
            return False
        core.patch_namespace(namespace, {"metadata": {"labels": labels}})
        return True

    wait_for(labelled, timeout=120, what=f"namespace {namespace} to finish terminating", interval=0.5)
    # A release left over from an interrupted run of a kept cluster would make install refuse.
    helm(kubeconfig, "uninstall", name, "-n", namespace, "--wait", "--ignore-not-found")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(values, file)
        file.flush()
        install_args = ["install", name, str(CHART), "-n", namespace, "-f", file.name, "--wait"]
        result = helm(kubeconfig, *install_args, "--timeout", "120s")
    selector = f"app.kubernetes.io/instance={name}"
    (deployment,) = client.AppsV1Api(api).list_namespaced_deployment(namespace, label_selector=selector).items
    env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}
    roles = client.RbacAuthorizationV1Api(api).list_cluster_role(
        label_selector=f"{selector},app.kubernetes.io/component=pipeline"
    )
    pipeline = roles.items[0].metadata.name if roles.items else ""
    return Release(
        name=name,
        namespace=namespace,
        kubeconfig=kubeconfig,
        install_output=result.stdout,
        deployment=deployment.metadata.name,
        service_account=deployment.spec.template.spec.service_account_name,
        worker_access_role=env["TESTENV_ACCESS_CLUSTERROLE"],
        pipeline_role=pipeline,
    )


def token_kubeconfig(
    api: client.ApiClient, admin_kubeconfig: Path, namespace: str, account: str, path: Path
) -> Path:
    """A kubeconfig that authenticates as ServiceAccount `namespace/account`, with a token from the
    TokenRequest API (what the kubelet mounts into a pod of that ServiceAccount). Its context names
    that namespace, as a CI job's kubeconfig does."""
    request = client.CoreV1Api(api).create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 3600}}
    )
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    user = f"{namespace}-{account}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": user, "user": {"token": request.status.token}}],
        "contexts": [
            {"name": user, "context": {"cluster": cluster["name"], "user": user, "namespace": namespace}}
        ],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def client_for(kubeconfig: Path) -> client.ApiClient:
    return kube.api_client(kubeconfig)


def allowed(
    api: client.ApiClient,
    user: str,
    verb: str,
    resource: str,
    namespace: str | None = None,
    subresource: str = "",
    group: str = "",
    name: str = "",
) -> bool:
    """Ask the API server's authorizer (a SubjectAccessReview) whether a ServiceAccount may do this."""
    _, _, sa_namespace, _ = user.split(":")
    attributes: dict[str, str] = {"verb": verb, "resource": resource, "group": group}
    if namespace:
        attributes["namespace"] = namespace
    if subresource:
        attributes["subresource"] = subresource
    if name:
        attributes["name"] = name
    review = client.AuthorizationV1Api(api).create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{sa_namespace}",
                    "system:authenticated",
                ],
                "resourceAttributes": attributes,
            },
        }
    )
    return bool(review.status.allowed)


def port_forward_refusal(api: client.ApiClient, namespace: str, pod: str, port: int) -> str | None:
    """Open a real port-forward to `pod` through the API server (WebSocket, as the Python client
    does it). None if the API server upgraded the connection, else its answer (e.g. 403 Forbidden)."""
    try:
        forward = portforward(
            client.CoreV1Api(api).connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port)
        )
    except ApiException as exc:
        return str(exc)
    forward.close()
    return None
