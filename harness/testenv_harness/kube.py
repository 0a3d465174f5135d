"""Thin helpers over the official Kubernetes client: clients from a kubeconfig, CRD install."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

import testenv_api
from testenv_harness.errors import ClusterError
from testenv_harness.waiting import WaitTimeoutError, wait_for


def api_client(kubeconfig: Path, context: str | None = None) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig), context=context)


def install_crd(api: client.ApiClient, timeout: float = 60.0) -> None:
    """Create or update the TestEnvironment and TestEnvironmentPool CRDs; wait until both are served."""
    for manifest in (testenv_api.crd_manifest(), testenv_api.pool_crd_manifest()):
        _install(api, manifest, timeout)


def _install(api: client.ApiClient, manifest: dict[str, Any], timeout: float) -> None:
    name = manifest["metadata"]["name"]
    crds = client.ApiextensionsV1Api(api)
    try:
        crds.create_custom_resource_definition(manifest)
    except ApiException as exc:
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
