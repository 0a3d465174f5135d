"""The few API calls the operator makes: server-side apply, delete, label-selected lists.

Lists come back as plain dicts (camelCase, as the API server sends them): the reconciler reads
a handful of fields and model deserialisation would only cost time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

FIELD_MANAGER = "testenv-operator"
_APPLY = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": "application/apply-patch+yaml"}

Obj = dict[str, Any]

# kind -> (API class, resource suffix of its methods, namespaced?)
KINDS: dict[str, tuple[type, str, bool]] = {
    "Namespace": (client.CoreV1Api, "namespace", False),
    "ResourceQuota": (client.CoreV1Api, "resource_quota", True),
    "LimitRange": (client.CoreV1Api, "limit_range", True),
    "Secret": (client.CoreV1Api, "secret", True),
    "Service": (client.CoreV1Api, "service", True),
    "Deployment": (client.AppsV1Api, "deployment", True),
    "NetworkPolicy": (client.NetworkingV1Api, "network_policy", True),
    "RoleBinding": (client.RbacAuthorizationV1Api, "role_binding", True),
}


def _method(api: client.ApiClient, verb: str, kind: str) -> tuple[Callable[..., Any], bool]:
    cls, suffix, namespaced = KINDS[kind]
    name = f"{verb}_namespaced_{suffix}" if namespaced else f"{verb}_{suffix}"
    return getattr(cls(api), name), namespaced


def apply(api: client.ApiClient, obj: Obj) -> None:
    """Create or update `obj` with server-side apply, taking over fields we own."""
    patch, namespaced = _method(api, "patch", obj["kind"])
    meta = obj["metadata"]
    args = (meta["name"], meta["namespace"]) if namespaced else (meta["name"],)
    patch(*args, obj, _preload_content=False, **_APPLY)


def create_namespace(api: client.ApiClient, obj: Obj) -> bool:
    """Create a namespace; False if one of that name exists already (it is then not ours to touch)."""
    try:
        client.CoreV1Api(api).create_namespace(obj, _preload_content=False)
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True


def delete(api: client.ApiClient, kind: str, name: str, namespace: str | None = None) -> None:
    """Delete one object in the background; already gone is fine."""
    remove, namespaced = _method(api, "delete", kind)
    args = (name, namespace) if namespaced else (name,)
    try:
        remove(*args, propagation_policy="Background", _preload_content=False)
    except ApiException as exc:
        if exc.status != 404:
            raise


def delete_pods_now(api: client.ApiClient, namespace: str) -> None:
    """Delete every pod of a namespace without a grace period."""
    try:
        client.CoreV1Api(api).delete_collection_namespaced_pod(
            namespace, grace_period_seconds=0, _preload_content=False
        )
    except ApiException as exc:
        if exc.status != 404:
            raise


def list_labelled(api: client.ApiClient, kind: str, selector: str) -> list[Obj]:
    """Every object of `kind` in any namespace that matches a label selector."""
    cls, suffix, namespaced = KINDS[kind]
    name = f"list_{suffix}_for_all_namespaces" if namespaced else f"list_{suffix}"
    response = getattr(cls(api), name)(label_selector=selector, _preload_content=False)
    items: list[Obj] = json.loads(response.data)["items"]
    return items


def _read(call: Callable[..., Any], *args: str) -> Obj | None:
    """One object as a dict, or None when it does not exist."""
    try:
        response = call(*args, _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    found: Obj = json.loads(response.data)
    return found


def read_namespace(api: client.ApiClient, name: str) -> Obj | None:
    return _read(client.CoreV1Api(api).read_namespace, name)


def read_secret(api: client.ApiClient, namespace: str, name: str) -> Obj | None:
    return _read(client.CoreV1Api(api).read_namespaced_secret, name, namespace)
