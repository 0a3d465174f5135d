"""Thin helpers over the official Kubernetes client: clients (from a kubeconfig or in-cluster),
who this client is, refusals worded for the person who can fix them, CRD install."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import testenv_api
from testenv_harness.ground import k8s
from testenv_harness.ground.errors import AccessError, ClusterError
from testenv_harness.ground.waiting import WaitTimeoutError, wait_for

#: Where a pod's ServiceAccount token and namespace are mounted (in-cluster configuration).
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: The chart's roles under its default release name (`helm install testenv-operator ...`).
PIPELINE_ROLE = "testenv-operator-pipeline"
WORKER_ACCESS_ROLE = "testenv-operator-worker-access"


def in_cluster() -> bool:
    """Whether this process runs in a pod with a mounted ServiceAccount token."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (SERVICE_ACCOUNT_DIR / "token").is_file()


def pod_namespace() -> str | None:
    """The namespace of the pod this process runs in, or None outside a cluster."""
    try:
        return (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip() or None
    except OSError:
        return None


def api_client(kubeconfig: Path | None, context: str | None = None) -> k8s.client.ApiClient:
    """A client from `kubeconfig` (and `context`), or from the pod's own token when it is None."""
    if kubeconfig is not None:
        return k8s.config.new_client_from_config(config_file=str(kubeconfig), context=context)
    if not in_cluster():
        raise ClusterError(
            "no kubeconfig and not inside a pod: set KUBECONFIG (or --testenv-kubeconfig), or run in a "
            "pod whose ServiceAccount token is mounted"
        )
    configuration = k8s.client.Configuration()
    k8s.config.load_incluster_config(client_configuration=configuration)
    return k8s.client.ApiClient(configuration)


def context_namespace(kubeconfig: Path, context: str | None = None) -> str | None:
    """The namespace a kubeconfig context names (what kubectl would use), or None."""
    try:
        contexts, current = k8s.config.list_kube_config_contexts(config_file=str(kubeconfig))
    except (k8s.config.ConfigException, OSError):
        return None
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else None


# -- who we are -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Identity:
    """The user the API server authenticated this client as (a SelfSubjectReview)."""

    username: str
    groups: tuple[str, ...] = ()

    @property
    def service_account(self) -> tuple[str, str] | None:
        """(namespace, name) for a ServiceAccount's token, else None."""
        parts = self.username.split(":")
        if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
            return parts[2], parts[3]
        return None

    def subject(self) -> dict[str, str] | None:
        """This identity as a spec.access subject; None for a `system:` user, which the CRD refuses
        (such users, e.g. system:admin, hold cluster-wide rights already)."""
        account = self.service_account
        if account is not None:
            return {"kind": "ServiceAccount", "namespace": account[0], "name": account[1]}
        if self.username and not self.username.startswith("system:"):
            return {"kind": "User", "name": self.username}
        return None

    def __str__(self) -> str:
        account = self.service_account
        return f"ServiceAccount {account[0]}/{account[1]}" if account else f"user {self.username!r}"


def whoami(api: k8s.client.ApiClient) -> Identity:
    """Ask the API server who this client is; every authenticated identity may (system:basic-user)."""
    review = k8s.client.AuthenticationV1Api(api).create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    )
    info = review.status.user_info
    return Identity(info.username or "", tuple(info.groups or ()))


# -- rights and refusals ----------------------------------------------------------------------------

#: A right as RBAC names it: (verb, resource[/subresource], API group).
Right = tuple[str, str, str]


def missing_rights(api: k8s.client.ApiClient, namespace: str, rights: list[Right]) -> list[Right]:
    """Which of `rights` this client lacks in `namespace` (SelfSubjectAccessReviews, which every
    authenticated identity may create): nothing is tried for real."""
    authorization = k8s.client.AuthorizationV1Api(api)
    missing = []
    for verb, resource, group in rights:
        name, _, subresource = resource.partition("/")
        attributes = {"namespace": namespace, "verb": verb, "group": group, "resource": name}
        if subresource:
            attributes["subresource"] = subresource
        review = authorization.create_self_subject_access_review(
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes},
            }
        )
        if not review.status.allowed:
            missing.append((verb, resource, group))
    return missing


def require_rights(
    api: k8s.client.ApiClient, namespace: str, rights: list[Right], grant: str, *, settle: float = 0.0
) -> None:
    """AccessError naming every right of `rights` this client lacks in `namespace`, who it is and
    what grants them. `settle`: seconds to keep asking while a RoleBinding may still be on its way."""
    missing: list[Right] = []

    def granted() -> bool:
        nonlocal missing
        missing = missing_rights(api, namespace, rights)
        return not missing

    if settle:
        with contextlib.suppress(WaitTimeoutError):
            wait_for(granted, timeout=settle, what=f"rights in {namespace}", interval=0.25)
    else:
        granted()
    if not missing:
        return
    try:
        who = str(whoami(api))
    except k8s.ApiException:
        who = "this identity"
    names = ", ".join(
        f"{verb} {resource}" + (f" ({group})" if group else "") for verb, resource, group in missing
    )
    raise AccessError(f"{who} may not {names} in namespace {namespace!r}: {grant}")


def refusal(exc: k8s.ApiException, verb: str, resource: str, namespace: str, grant: str) -> AccessError:
    """A 403 worded for whoever can fix it: what was refused, for whom, and what grants it.

    The API server's own message names the identity ("User \"system:serviceaccount:ci:pipeline\"
    cannot create resource ..."), so it is quoted as it came.
    """
    return AccessError(
        f"the cluster refused to {verb} {resource} in namespace {namespace!r} ({exc.status} "
        f"{exc.reason}: {said(exc)}); {grant}"
    )


def said(exc: k8s.ApiException) -> str:
    """The message of the API server's Status in an error response (or its body as it came)."""
    try:
        body: dict[str, Any] = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return str(exc.body or "").strip() or "no message"
    return str(body.get("message") or "no message")


def pipeline_grant(namespace: str) -> str:
    """What grants a pipeline the right to manage TestEnvironments in `namespace`."""
    return (
        f"bind the chart's pipeline ClusterRole ({PIPELINE_ROLE} for release testenv-operator) to this "
        f"identity with a RoleBinding in {namespace} (docs/shared-ci-cluster.md, 'Bind a pipeline')"
    )


def worker_grant(name: str) -> str:
    """What grants access to the worker namespaces of environment `name`."""
    return (
        f"the operator binds the chart's worker-access ClusterRole ({WORKER_ACCESS_ROLE} for release "
        f"testenv-operator) in each worker namespace to the identities in {name}'s spec.access.subjects: "
        "check that this identity is among them (kube-testenv adds the run's own), and that the "
        "installed chart's role has the verb (`kubectl describe clusterrole "
        f"{WORKER_ACCESS_ROLE}`; upgrade the chart if not)"
    )


# -- the CRDs (clusters this harness administers) ---------------------------------------------------


def install_crd(api: k8s.client.ApiClient, timeout: float = 60.0) -> None:
    """Create or update the TestEnvironment and TestEnvironmentPool CRDs; wait until both are served."""
    for manifest in (testenv_api.crd_manifest(), testenv_api.pool_crd_manifest()):
        _install(api, manifest, timeout)


def _install(api: k8s.client.ApiClient, manifest: dict[str, Any], timeout: float) -> None:
    name = manifest["metadata"]["name"]
    crds = k8s.client.ApiextensionsV1Api(api)
    try:
        crds.create_custom_resource_definition(manifest)
    except k8s.ApiException as exc:
        if exc.status != 409:
            raise ClusterError(f"installing CRD {name} failed: {exc.status} {exc.reason}") from exc
        current = crds.read_custom_resource_definition(name)
        manifest["metadata"]["resourceVersion"] = current.metadata.resource_version
        crds.replace_custom_resource_definition(name, manifest)
    conditions: dict[str, str] = {}

    def established() -> bool:
        nonlocal conditions
        crd = crds.read_custom_resource_definition(name)
        conditions = {c.type: c.status for c in (crd.status.conditions or [])}
        return conditions.get("Established") == "True"

    try:
        wait_for(
            established,
            timeout=timeout,
            what=f"CRD {name} to be Established",
            seen=lambda: f"conditions {conditions}",
        )
    except WaitTimeoutError as exc:
        raise ClusterError(str(exc)) from exc
