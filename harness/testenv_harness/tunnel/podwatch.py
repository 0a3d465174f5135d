"""The ready pods of every service in one namespace, kept current by a single watch.

A worker's forwards ask "which pod serves `redis` now?" on every new connection and must drop
connections to a pod that stopped running. One LIST, then one WATCH per namespace answers
both with no polling: an idle worker costs the API server one open request. Pods whose
containers run but are not Ready yet are kept too (`started`): a worker starting up forwards to
them to see its services answer before the kubelet's next probe would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from testenv_api import LABEL_SERVICE
from testenv_harness.ground import k8s

log = logging.getLogger(__name__)
Pod = dict[str, Any]
#: Seconds a watch request stays open before the server ends it and it is renewed.
WATCH_SECONDS = 300


def _deleting(pod: Pod) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def is_ready(pod: Pod) -> bool:
    if _deleting(pod):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def is_started(pod: Pod) -> bool:
    """Every container runs (Ready or not) and the pod is not being deleted."""
    if _deleting(pod):
        return False
    status = pod.get("status") or {}
    containers = status.get("containerStatuses") or []
    return (
        status.get("phase") == "Running"
        and bool(containers)
        and all("running" in (c.get("state") or {}) for c in containers)
    )


class PodWatch:
    """Ready and started pods per service; `on_change(ready, started)` (pod names) runs after every
    change, on the watch thread."""

    def __init__(
        self,
        api: k8s.client.ApiClient,
        namespace: str,
        on_change: Callable[[set[str], set[str]], None] | None = None,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.on_change = on_change
        #: ready or started pod -> (service, creationTimestamp, ready)
        self._pods: dict[str, tuple[str, str, bool]] = {}
        self._changed = threading.Condition()
        self._synced = False
        self._stop = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name=f"podwatch-{namespace}", daemon=True)
        self._thread.start()

    # -- reading ----------------------------------------------------------------------------

    def ready(self, service: str, timeout: float = 10) -> list[str]:
        """Ready pods of `service`, newest first (waits for the first LIST, at most `timeout`)."""
        return self._of(service, True, timeout)

    def started(self, service: str, timeout: float = 10) -> list[str]:
        """Pods of `service` whose containers run but that are not Ready yet, newest first."""
        return self._of(service, False, timeout)

    def _of(self, service: str, ready: bool, timeout: float) -> list[str]:
        with self._changed:
            if not self._synced:
                self._changed.wait_for(lambda: self._synced, timeout)
            mine = [(c, name) for name, (svc, c, r) in self._pods.items() if svc == service and r == ready]
        return [name for _, name in sorted(mine, reverse=True)]

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until `predicate()` (re-checked on every change) holds; False on timeout."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    # -- the watch --------------------------------------------------------------------------

    def _request(self, **params: str | int | bool) -> Any:
        """The raw (urllib3) response of a LIST or WATCH of the service pods. Made through the API
        client itself, not `CoreV1Api`, whose import takes a second of CPU (more on 2 busy cores),
        right when a starting worker waits for its services."""
        query = [("labelSelector", LABEL_SERVICE), *params.items()]
        request = self.api.param_serialize(
            method="GET",
            resource_path="/api/v1/namespaces/{namespace}/pods",
            path_params={"namespace": self.namespace},
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        answer = self.api.call_api(*request)
        if not 200 <= answer.status <= 299:
            answer.read()
            raise k8s.ApiException.from_response(http_resp=answer, body=None, data=None)
        response = answer.response
        self._response = response
        if self._stop.is_set():  # closed while the request was being made
            response.shutdown()
        return response

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                version = self._list()
                while not self._stop.is_set() and version:
                    version = self._watch(version)
            except Exception as exc:  # API server briefly away: keep the last view, retry
                if self._stop.is_set():
                    return
                log.debug("pod watch of %s failed (%s); listing again", self.namespace, exc)
                self._stop.wait(1)

    def _list(self) -> str:
        body = json.loads(self._request().data)
        pods = {p["metadata"]["name"]: p for p in body.get("items") or []}
        self._replace(pods)
        return str(body["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> str:
        """Apply events until the server ends the request; the version to resume from, or "" to relist."""
        response = self._request(
            watch=True, resourceVersion=version, allowWatchBookmarks=True, timeoutSeconds=WATCH_SECONDS
        )
        try:
            for line in response:
                event = json.loads(line)
                kind, pod = event["type"], event["object"]
                if kind == "ERROR":  # typically 410 Gone: the version is too old
                    return ""
                version = pod["metadata"]["resourceVersion"]
                if kind != "BOOKMARK":
                    self._apply(pod, deleted=kind == "DELETED")
        finally:
            response.release_conn()
        return version

    def _replace(self, pods: dict[str, Pod]) -> None:
        with self._changed:
            self._pods = {}
            for pod in pods.values():
                self._record(pod, deleted=False)
            self._synced = True
        self._notify()

    def _apply(self, pod: Pod, deleted: bool) -> None:
        with self._changed:
            before = self._pods.get(pod["metadata"]["name"])
            self._record(pod, deleted)
            changed = before != self._pods.get(pod["metadata"]["name"])
        if changed:
            self._notify()

    def _record(self, pod: Pod, deleted: bool) -> None:
        meta = pod["metadata"]
        service = (meta.get("labels") or {}).get(LABEL_SERVICE, "")
        ready = not deleted and is_ready(pod)
        if ready or (not deleted and is_started(pod)):
            self._pods[meta["name"]] = (service, meta.get("creationTimestamp", ""), ready)
        else:
            self._pods.pop(meta["name"], None)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()
            ready = {name for name, (_, _, r) in self._pods.items() if r}
            started = set(self._pods) - ready
        log.debug(
            "pods of %s: ready %s, running but not ready %s", self.namespace, sorted(ready), sorted(started)
        )
        if self.on_change:
            try:
                self.on_change(ready, started)
            except Exception:  # a listener's bug must not stop the watch
                log.exception("pod watch listener failed")

    def close(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()  # wakes the watch thread blocked in a read
        self._thread.join(timeout=2)
