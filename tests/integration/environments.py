"""Test helpers around TestEnvironment objects on the real API server."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

import testenv_api
from testenv_api import GROUP, LABEL_OWNER_UID, PLURAL, VERSION, Phase
from testenv_harness.ground.waiting import wait_for

Manifest = dict[str, Any]
#: TESTENV_MAX_WORKERS of the tests' operator: below the CRD's ceiling, so that asking for one
#: worker more is refused by the operator's own check, not by the API server.
MAX_WORKERS_UNDER_TEST = 32
#: Settings of the tests' operator processes: a short resync repairs drift within seconds.
OPERATOR_SETTINGS = {"TESTENV_RESYNC_SECONDS": "2"}


def manifest(
    name: str, workers: int = 2, services: list[dict[str, Any]] | None = None, **spec: Any
) -> Manifest:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": testenv_api.KIND,
        "metadata": {"name": name},
        "spec": {"workers": workers, "services": services or [{"name": "redis", "type": "redis"}], **spec},
    }


def create(api: client.ApiClient, namespace: str, body: Manifest) -> Manifest:
    result: Manifest = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    return result


def get(api: client.ApiClient, namespace: str, name: str, plural: str = PLURAL) -> Manifest:
    result: Manifest = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, name
    )
    return result


def patch_spec(api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": spec}, _content_type="application/merge-patch+json"
    )


def wait_phase(
    api: client.ApiClient, namespace: str, name: str, phase: Phase, timeout: float = 90, **extra: Any
) -> Manifest:
    """Wait until status.phase is `phase` (and status matches `extra`, e.g. readyWorkers=3)."""
    status: dict[str, Any] = {}

    def reached() -> Manifest | None:
        nonlocal status
        body = get(api, namespace, name)
        status = body.get("status") or {}
        generation_seen = status.get("observedGeneration") == body["metadata"]["generation"]
        wanted = status.get("phase") == phase and all(status.get(k) == v for k, v in extra.items())
        return body if wanted and generation_seen else None

    return wait_for(
        reached,
        timeout=timeout,
        what=f"{namespace}/{name} to reach {phase} {extra or ''}",
        interval=0.25,
        seen=lambda: f"status {status}",
    )


def owned_namespaces(api: client.ApiClient, uid: str) -> list[Any]:
    return client.CoreV1Api(api).list_namespace(label_selector=f"{LABEL_OWNER_UID}={uid}").items


def _gone(api: client.ApiClient, namespace: str, name: str, plural: str) -> bool:
    try:
        get(api, namespace, name, plural)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def delete(api: client.ApiClient, namespace: str, name: str, timeout: float = 120) -> None:
    """Delete and wait until the object (and so, through the finalizer, its namespaces) is gone."""
    delete_many(api, namespace, [name], timeout)


def ask_to_delete(api: client.ApiClient, namespace: str, names: list[str], plural: str = PLURAL) -> None:
    """Ask for each object's deletion (one already gone is fine) without waiting for any. The
    namespace controller takes at least 5 s to remove a deleted namespace (its fixed grace before
    it acts), and each object waits for its namespaces: a test with no use for the wait goes on."""
    objects = client.CustomObjectsApi(api)
    for name in names:
        try:
            objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def delete_many(
    api: client.ApiClient, namespace: str, names: list[str], timeout: float = 120, plural: str = PLURAL
) -> None:
    """Delete all at once, then wait for all: teardown time is the slowest, not the sum."""
    ask_to_delete(api, namespace, names, plural)
    left = list(names)

    def all_gone() -> bool:
        nonlocal left
        left = [n for n in left if not _gone(api, namespace, n, plural)]
        return not left

    wait_for(
        all_gone,
        timeout=timeout,
        what=f"{namespace}: {', '.join(names)} to be deleted",
        interval=0.25,
        seen=lambda: f"still there: {', '.join(left)}",
    )


def settled_count(api: client.ApiClient, timeout: float = 120) -> int:
    """How many TestEnvironments the cluster holds, once none is being deleted. A run hands its
    environment's deletion to an operator and exits; with the local tiers' files mixed on one
    cluster (`make test`), what an earlier test left this way is finished by the next operator,
    which would move cluster-wide counts that a test compares."""
    custom = client.CustomObjectsApi(api)
    deleting: list[str] = []

    def check() -> int | None:
        items = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
        deleting[:] = [
            f"{i['metadata']['namespace']}/{i['metadata']['name']}"
            for i in items
            if i["metadata"].get("deletionTimestamp")
        ]
        return None if deleting else len(items) + 1  # + 1: a count of 0 is an answer too

    return (
        wait_for(
            check,
            timeout=timeout,
            what="no TestEnvironment in the cluster to be being deleted",
            interval=0.25,
            seen=lambda: f"being deleted: {', '.join(deleting)}",
        )
        - 1
    )


def names_in(api: client.ApiClient, namespace: str) -> list[str]:
    """The TestEnvironments in `namespace`, those being deleted included."""
    listing = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    return [item["metadata"]["name"] for item in listing["items"]]


def delete_all(api: client.ApiClient, namespace: str, wait: bool = True) -> list[str]:
    """Delete every TestEnvironment in `namespace` and, with `wait`, wait until all are gone (the
    slowest: at least 5 s, the namespace controller's grace before it removes their namespaces).
    The names asked for."""
    names = names_in(api, namespace)
    if wait:
        delete_many(api, namespace, names)
    else:
        ask_to_delete(api, namespace, names)
    return names


# -- TestEnvironmentPools ------------------------------------------------------------------------


def pool_manifest(name: str, size: int, services: list[dict[str, Any]], **spec: Any) -> Manifest:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": testenv_api.POOL_KIND,
        "metadata": {"name": name},
        "spec": {"size": size, "services": services, **spec},
    }


def create_pool(api: client.ApiClient, namespace: str, body: Manifest) -> Manifest:
    result: Manifest = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, testenv_api.POOL_PLURAL, body
    )
    return result


def get_pool(api: client.ApiClient, namespace: str, name: str) -> Manifest:
    return get(api, namespace, name, testenv_api.POOL_PLURAL)


def wait_pool(
    api: client.ApiClient, namespace: str, name: str, timeout: float = 90, **wanted: Any
) -> Manifest:
    """Wait until the pool's status has every `wanted` value (e.g. ready=3, claimed=2)."""
    status: dict[str, Any] = {}

    def reached() -> Manifest | None:
        nonlocal status
        body = get_pool(api, namespace, name)
        status = body.get("status") or {}
        return body if all(status.get(k) == v for k, v in wanted.items()) else None

    return wait_for(
        reached, timeout=timeout, what=f"pool {namespace}/{name} {wanted}", seen=lambda: f"{status}"
    )


def delete_pool(api: client.ApiClient, namespace: str, name: str, timeout: float = 120) -> None:
    """Delete a pool and wait until it (and so, through its finalizer, its free workers) is gone."""
    delete_many(api, namespace, [name], timeout, testenv_api.POOL_PLURAL)


def pooled_namespaces(api: client.ApiClient, pool_uid: str) -> dict[str, Any]:
    """Every live namespace the pool made, claimed or free, by name."""
    selector = f"{testenv_api.LABEL_POOL_UID}={pool_uid}"
    found = client.CoreV1Api(api).list_namespace(label_selector=selector).items
    return {ns.metadata.name: ns for ns in found if not ns.metadata.deletion_timestamp}
