"""What our API calls put on the wire: method, path, query and body type.

The operator's kubeio and the harness's `k8s.call` name REST paths themselves instead of calling
the generated API classes (they take about a second of CPU to import), so each call here is
checked against the request the API documents. A recording HTTP server stands for the API server;
the integration tier runs them against a real one.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import pytest

from testenv_harness.ground import k8s
from testenv_operator import kubeio
from testenv_operator.kubeio import Timeouts
from tests.unit.plain_http_api import use_server

GROUP_PATH = "/apis/testenv.dev/v1alpha1"


class Seen(NamedTuple):
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    accept: str
    body: Any


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[Seen]
    status = 200

    def _record(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.seen.append(
            Seen(
                self.command,
                url.path,
                dict(parse_qsl(url.query)),
                self.headers.get("Content-Type", ""),
                self.headers.get("Accept", ""),
                json.loads(raw) if raw else None,
            )
        )
        body = json.dumps({"kind": "Status", "items": [], "metadata": {"resourceVersion": "7"}}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._record()

    def do_POST(self) -> None:
        self._record()

    def do_PUT(self) -> None:
        self._record()

    def do_PATCH(self) -> None:
        self._record()

    def do_DELETE(self) -> None:
        self._record()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, list[Seen]]]:
    seen: list[Seen] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    use_server(tmp_path, server.server_address[1], monkeypatch)
    yield kubeio.connect(Timeouts(2, 2)), seen
    server.shutdown()
    server.server_close()


def test_apply_and_delete_address_each_kind_where_the_api_serves_it(api: tuple[Any, list[Seen]]) -> None:
    client, seen = api
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "redis", "namespace": "w-0"},
    }
    kubeio.apply(client, deployment)
    kubeio.apply(client, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "w-0"}})
    kubeio.delete(client, "NetworkPolicy", "isolate", "w-0")
    kubeio.delete(client, "Namespace", "w-0")
    applied, namespace, policy, gone = seen
    assert (applied.method, applied.path) == ("PATCH", "/apis/apps/v1/namespaces/w-0/deployments/redis")
    assert applied.query == {"fieldManager": "testenv-operator", "force": "true"}
    assert applied.content_type == "application/apply-patch+yaml"
    assert applied.body == deployment
    assert (namespace.method, namespace.path) == ("PATCH", "/api/v1/namespaces/w-0")
    assert (policy.method, policy.path) == (
        "DELETE",
        "/apis/networking.k8s.io/v1/namespaces/w-0/networkpolicies/isolate",
    )
    assert policy.query == {"propagationPolicy": "Background"}
    assert (gone.method, gone.path, gone.query) == (
        "DELETE",
        "/api/v1/namespaces/w-0",
        {"propagationPolicy": "Background"},
    )


def test_lists_pages_and_watches_span_every_namespace(api: tuple[Any, list[Seen]]) -> None:
    client, seen = api
    assert kubeio.list_labelled(client, "RoleBinding", "a=b") == []
    page = kubeio.list_page(client, "Deployment", "a=b", 50, "tok")
    assert page == kubeio.Page([], "7", "")
    kubeio.list_page(client, "Namespace", "a=b", 50)
    list(kubeio.watch_events(client, "Deployment", "a=b", "41", 300))
    rolebindings, paged, first, watch = seen
    assert (rolebindings.path, rolebindings.query) == (
        "/apis/rbac.authorization.k8s.io/v1/rolebindings",
        {"labelSelector": "a=b"},
    )
    assert (paged.path, paged.query) == (
        "/apis/apps/v1/deployments",
        {"labelSelector": "a=b", "limit": "50", "continue": "tok"},
    )
    assert (first.path, first.query) == ("/api/v1/namespaces", {"labelSelector": "a=b", "limit": "50"})
    assert (watch.method, watch.path) == ("GET", "/apis/apps/v1/deployments")
    assert watch.query == {
        "labelSelector": "a=b",
        "watch": "true",
        "resourceVersion": "41",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "300",
    }


def test_namespace_calls_carry_their_preconditions(api: tuple[Any, list[Seen]]) -> None:
    client, seen = api
    assert kubeio.create_namespace(client, {"metadata": {"name": "w-1"}}) is True
    assert kubeio.delete_namespace_if_unchanged(client, "w-1", "12") is True
    assert kubeio.relabel_namespace(client, "w-1", {"pool": "p"}, "13") is True
    kubeio.delete_pods_now(client, "w-1")
    assert kubeio.read_namespace(client, "w-1") is not None
    assert kubeio.read_secret(client, "w-1", "token") is not None
    created, deleted, relabelled, pods, read, secret = seen
    assert (created.method, created.path, created.body) == (
        "POST",
        "/api/v1/namespaces",
        {"metadata": {"name": "w-1"}},
    )
    assert (deleted.method, deleted.path) == ("DELETE", "/api/v1/namespaces/w-1")
    assert deleted.body == {"propagationPolicy": "Background", "preconditions": {"resourceVersion": "12"}}
    assert (relabelled.method, relabelled.path) == ("PATCH", "/api/v1/namespaces/w-1")
    assert relabelled.content_type == "application/merge-patch+json"
    assert relabelled.body == {"metadata": {"labels": {"pool": "p"}, "resourceVersion": "13"}}
    assert (pods.method, pods.path, pods.query) == (
        "DELETE",
        "/api/v1/namespaces/w-1/pods",
        {"gracePeriodSeconds": "0"},
    )
    assert (read.method, read.path) == ("GET", "/api/v1/namespaces/w-1")
    assert (secret.method, secret.path) == ("GET", "/api/v1/namespaces/w-1/secrets/token")


def test_custom_objects_and_leases(api: tuple[Any, list[Seen]]) -> None:
    client, seen = api
    assert kubeio.environment_uids(client, "team") == set()
    kubeio.environments_deleting(client, "")
    kubeio.patch_environment_status(client, "team", "env", {"phase": "Ready"})
    kubeio.delete_environment(client, "team", "env")
    assert kubeio.list_pools(client, "team") == []
    kubeio.patch_pool_status(client, "team", "pool", {"warm": 1})
    kubeio.read_lease(client, "default", "lock")
    lease = {"metadata": {"name": "lock", "namespace": "default"}, "spec": {}}
    kubeio.write_lease(client, lease)
    kubeio.write_lease(client, {**lease, "metadata": {**lease["metadata"], "resourceVersion": "5"}})
    uids, everywhere, status, deleted, pools, pool_status, read, created, replaced = seen
    assert uids.path == f"{GROUP_PATH}/namespaces/team/testenvironments"
    assert uids.accept == "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
    assert everywhere.path == f"{GROUP_PATH}/testenvironments"
    assert (status.method, status.path) == (
        "PATCH",
        f"{GROUP_PATH}/namespaces/team/testenvironments/env/status",
    )
    assert (status.content_type, status.body) == (
        "application/merge-patch+json",
        {"status": {"phase": "Ready"}},
    )
    assert (deleted.method, deleted.path) == ("DELETE", f"{GROUP_PATH}/namespaces/team/testenvironments/env")
    assert (pools.method, pools.path) == ("GET", f"{GROUP_PATH}/namespaces/team/testenvironmentpools")
    assert pool_status.path == f"{GROUP_PATH}/namespaces/team/testenvironmentpools/pool/status"
    assert read.path == "/apis/coordination.k8s.io/v1/namespaces/default/leases/lock"
    assert (created.method, created.path) == (
        "POST",
        "/apis/coordination.k8s.io/v1/namespaces/default/leases",
    )
    assert (replaced.method, replaced.path) == (
        "PUT",
        "/apis/coordination.k8s.io/v1/namespaces/default/leases/lock",
    )


def test_a_refusal_is_a_typed_error_with_the_servers_message(api: tuple[Any, list[Seen]]) -> None:
    client, seen = api
    _Recorder.status = 409  # every answer now: AlreadyExists, or a stale resourceVersion
    try:
        assert kubeio.create_namespace(client, {"metadata": {"name": "taken"}}) is False
        with pytest.raises(kubeio.ConflictError):
            kubeio.write_lease(
                client, {"metadata": {"name": "lock", "namespace": "default", "resourceVersion": "1"}}
            )
    finally:
        _Recorder.status = 200
    assert [s.method for s in seen] == ["POST", "PUT"]


def test_the_harness_call_sends_json_and_answers_with_the_parsed_body(api: tuple[Any, list[Seen]]) -> None:
    client, seen = api
    found = k8s.call(client, "GET", "/api/v1/pods", [("labelSelector", "a=b")])
    assert found["metadata"] == {"resourceVersion": "7"}
    k8s.call(client, "POST", "/api/v1/namespaces", body={"metadata": {"name": "n"}})
    _Recorder.status = 404
    try:
        with pytest.raises(k8s.ApiException) as refused:
            k8s.call(client, "DELETE", "/apis/kwok.x-k8s.io/v1alpha1/namespaces/n/portforwards/p")
    finally:
        _Recorder.status = 200
    assert refused.value.status == 404
    listed, created, deleted = seen
    assert (listed.method, listed.path, listed.query) == ("GET", "/api/v1/pods", {"labelSelector": "a=b"})
    assert (created.method, created.content_type, created.body) == (
        "POST",
        "application/json",
        {"metadata": {"name": "n"}},
    )
    assert (deleted.method, deleted.path) == (
        "DELETE",
        "/apis/kwok.x-k8s.io/v1alpha1/namespaces/n/portforwards/p",
    )
