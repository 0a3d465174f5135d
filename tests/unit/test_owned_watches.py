"""The operator's own watches of owned namespaces and Deployments (`watches`): the index by owner,
and the list-then-watch loop against a plain-HTTP server that plays a scripted API server (pages,
a watch, an expired version, a list again)."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testenv_api import LABEL_OWNER_UID
from testenv_operator import kubeio, watches
from testenv_operator.kubeio import Timeouts
from testenv_operator.watches import DEPLOYMENTS, NAMESPACES, OwnedIndex, OwnedWatches
from tests.unit.plain_http_api import use_server


def deployment(ns: str, name: str, owner: str, ready: bool, version: str = "1") -> dict[str, Any]:
    status = {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1} if ready else {}
    meta = {"namespace": ns, "name": name, "generation": 1, "labels": {LABEL_OWNER_UID: owner}}
    return {"metadata": {**meta, "resourceVersion": version}, "status": status}


def namespace(name: str, owner: str, terminating: bool = False, version: str = "1") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {LABEL_OWNER_UID: owner}, "resourceVersion": version}
    if terminating:
        meta["deletionTimestamp"] = "2026-12-06T00:00:00Z"
    return {"metadata": meta}


# -- the index --------------------------------------------------------------------------------------


def test_a_put_that_changes_nothing_tells_nobody() -> None:
    index = OwnedIndex()
    assert index.put("a", "ns-1", False) == [("a", "ns-1")]
    assert index.put("a", "ns-1", False) == []
    assert index.put("a", "ns-1", True) == [("a", "ns-1")]
    assert index.of("a") == {"ns-1": True}


def test_an_object_relabelled_to_another_owner_moves_and_both_owners_hear_of_it() -> None:
    index = OwnedIndex()
    index.put("pool", "ns-1", False)
    assert index.put("env", "ns-1", False) == [("pool", "ns-1"), ("env", "ns-1")]
    assert index.of("pool") == {}
    assert index.of("env") == {"ns-1": False}
    assert len(index) == 1


def test_a_new_list_drops_what_is_gone_and_tells_only_what_changed() -> None:
    index = OwnedIndex()
    index.put("a", "ns-1", False)
    index.put("a", "ns-2", False)
    index.put("b", "ns-3", False)
    changed = index.replace([("a", "ns-1", False), ("b", "ns-3", True), ("c", "ns-4", False)])
    assert sorted(changed) == [("a", "ns-2"), ("b", "ns-3"), ("c", "ns-4")]
    assert index.of("a") == {"ns-1": False}
    assert index.of("b") == {"ns-3": True}
    assert index.drop("ns-9") == []


def test_objects_without_an_owner_label_are_not_indexed() -> None:
    obj = namespace("ns-1", "a")
    obj["metadata"]["labels"] = {}
    assert watches.entry(NAMESPACES, obj) is None
    assert watches.entry(DEPLOYMENTS, deployment("ns-1", "redis", "a", True)) == (
        "a",
        ("ns-1", "redis"),
        True,
    )


# -- the loop, against a scripted API server -------------------------------------------------------


class _Script:
    """What the fake API server answers: Deployment lists in two pages, then watches in turn."""

    def __init__(self) -> None:
        self.deployment_watches: list[list[dict[str, Any]]] = []
        self.lists: dict[str, int] = {"deployments": 0, "namespaces": 0}
        self.watched_from: list[str] = []
        self.lock = threading.Lock()
        self.listed_again = threading.Event()
        #: Versions whose watch is refused with an HTTP 410 (not an ERROR event).
        self.gone: set[str] = set()


def _handler(script: _Script) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            url = urllib.parse.urlparse(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            kind = "deployments" if url.path == "/apis/apps/v1/deployments" else "namespaces"
            assert query["labelSelector"] == LABEL_OWNER_UID
            if query.get("watch") == "true":
                self._watch(kind, query["resourceVersion"])
            else:
                self._list(kind, query.get("continue", ""))

        def _list(self, kind: str, token: str) -> None:
            with script.lock:
                if not token:
                    script.lists[kind] += 1
                round_ = script.lists[kind]
            if kind == "namespaces":
                self._send({"metadata": {"resourceVersion": "5"}, "items": [namespace("w-0", "env-a")]})
            elif round_ == 1 and not token:  # first list, first page
                page = [deployment("w-0", "redis", "env-a", False)]
                self._send({"metadata": {"resourceVersion": "10", "continue": "t1"}, "items": page})
            elif round_ == 1:
                page = [deployment("w-0", "kafka", "env-a", True)]
                self._send({"metadata": {"resourceVersion": "10"}, "items": page})
            else:  # listed again after the watch's version expired: kafka is gone meanwhile
                script.listed_again.set()
                page = [deployment("w-0", "redis", "env-a", True)]
                self._send({"metadata": {"resourceVersion": "30"}, "items": page})

        def _watch(self, kind: str, version: str) -> None:
            events: list[dict[str, Any]] = []
            if kind == "deployments":
                if version in script.gone:
                    script.watched_from.append(version)
                    status = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
                    self._send(status, 410)
                    return
                with script.lock:
                    script.watched_from.append(version)
                    events = script.deployment_watches.pop(0) if script.deployment_watches else []
            if not events:  # nothing more to say: hold the watch open a while, as a server does
                threading.Event().wait(0.5)
            lines = b"".join(json.dumps(e).encode() + b"\n" for e in events)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(lines)))
            self.end_headers()
            self.wfile.write(lines)

        def _send(self, answer: dict[str, Any], code: int = 200) -> None:
            page = json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *_: Any) -> None:
            pass

    return Handler


@pytest.fixture
def script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Script]:
    script = _Script()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    use_server(tmp_path, server.server_address[1], monkeypatch)
    yield script
    server.shutdown()
    server.server_close()


def test_the_watches_list_in_pages_follow_events_and_list_again_when_the_version_expired(
    script: _Script,
) -> None:
    script.deployment_watches = [
        [
            {"type": "MODIFIED", "object": deployment("w-0", "redis", "env-a", True, "11")},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}},
            {"type": "ADDED", "object": deployment("w-1", "redis", "env-b", False, "13")},
        ],
        [
            {"type": "DELETED", "object": deployment("w-1", "redis", "env-b", False, "14")},
            {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}},
        ],
    ]
    told: list[tuple[str, str, Any]] = []

    async def run() -> tuple[bool, OwnedWatches]:
        synced = asyncio.Event()
        api = kubeio.connect(Timeouts(2, 2))
        loop = asyncio.get_running_loop()
        owned = OwnedWatches(api, loop, lambda kind, uid, key: told.append((kind, uid, key)), synced.set)
        owned.start()
        await asyncio.wait_for(synced.wait(), 5)
        first = owned.observed("env-a")
        assert first.ready == {("w-0", "kafka")}
        assert first.present == {("Deployment", "w-0", "redis"), ("Deployment", "w-0", "kafka")}
        assert dict(first.namespaces)["w-0"].terminating is False
        await asyncio.wait_for(loop.run_in_executor(None, script.listed_again.wait, 5), 6)
        await asyncio.sleep(0.2)  # the new list reaches the loop
        owned.stop()
        return owned.synced, owned

    synced, owned = asyncio.run(run())
    assert synced
    # Watched from the list's version, then from the last event's (the bookmark moved it on).
    assert script.watched_from[:2] == ["10", "13"]
    assert script.watched_from[2] == "30", "after the 410, a new list and a watch from its version"
    assert owned.observed("env-a").ready == {("w-0", "redis")}
    assert owned.observed("env-a").present == {("Deployment", "w-0", "redis")}
    assert owned.observed("env-b").present == frozenset()
    deployments_told = [(uid, key) for kind, uid, key in told if kind == "Deployment"]
    assert deployments_told == [
        ("env-a", ("w-0", "redis")),  # the first list
        ("env-a", ("w-0", "kafka")),
        ("env-a", ("w-0", "redis")),  # turned ready
        ("env-b", ("w-1", "redis")),  # added
        ("env-b", ("w-1", "redis")),  # deleted
        ("env-a", ("w-0", "kafka")),  # gone, as the new list shows
    ]


def test_a_watch_refused_with_an_http_410_lists_again(script: _Script) -> None:
    script.gone = {"10"}

    async def run() -> OwnedWatches:
        synced = asyncio.Event()
        owned = OwnedWatches(
            kubeio.connect(Timeouts(2, 2)), asyncio.get_running_loop(), lambda *_: None, synced.set
        )
        owned.start()
        await asyncio.wait_for(synced.wait(), 5)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.run_in_executor(None, script.listed_again.wait, 5), 6)
        await asyncio.sleep(0.2)
        owned.stop()
        return owned

    owned = asyncio.run(run())
    assert script.watched_from[:2] == ["10", "30"], "after the 410, a new list and a watch from its version"
    assert owned.observed("env-a").ready == {("w-0", "redis")}
