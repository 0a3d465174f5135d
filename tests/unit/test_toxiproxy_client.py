"""The Toxiproxy API client: the requests it sends and how it reports refusals, against a small
HTTP server of the test's own that answers as Toxiproxy 2.5 does (the kind tier drives the real
server in a pod)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from testenv_harness.services.toxiproxy import Toxiproxy, ToxiproxyError


class _FakeToxiproxy(http.server.BaseHTTPRequestHandler):
    """Records every request; keeps one proxy `redis` with its toxics, as the real one would."""

    seen: list[tuple[str, str, Any]]
    toxics: dict[str, dict[str, Any]]
    enabled: bool

    def log_message(self, *_: Any) -> None:
        pass

    def _answer(self, status: int, body: Any = None, text: str = "") -> None:
        data = text.encode() if text else (b"" if body is None else json.dumps(body).encode())
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._answer(status, {"error": message, "status": status})

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        cls = type(self)
        cls.seen.append((self.command, self.path, body))
        parts = self.path.strip("/").split("/")
        if self.path == "/version":
            return self._answer(200, text="2.5.0")
        if self.path == "/reset" and self.command == "POST":
            cls.toxics.clear()
            cls.enabled = True
            return self._answer(204)
        if parts[0] != "proxies":
            return self._error(404, "not found")
        if len(parts) == 1:
            proxy = {"name": "redis", "enabled": cls.enabled, "toxics": list(cls.toxics.values())}
            return self._answer(200, {"redis": proxy})
        if parts[1] != "redis":
            return self._error(404, "proxy not found")
        if len(parts) == 2 and self.command == "POST":
            cls.enabled = bool(body["enabled"])
            return self._answer(200, {"name": "redis", "enabled": cls.enabled})
        if len(parts) == 3 and self.command == "POST":
            if body["name"] in cls.toxics:
                return self._error(409, "toxic already exists")
            cls.toxics[body["name"]] = body
            return self._answer(200, body)
        if len(parts) == 3:
            return self._answer(200, list(cls.toxics.values()))
        if len(parts) == 4 and self.command == "DELETE":
            if cls.toxics.pop(parts[3], None) is None:
                return self._error(404, "toxic not found")
            return self._answer(204)
        return self._error(405, "method not allowed")

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()


@pytest.fixture
def fake() -> Iterator[tuple[Toxiproxy, type[_FakeToxiproxy]]]:
    handler = type("Handler", (_FakeToxiproxy,), {"seen": [], "toxics": {}, "enabled": True})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Toxiproxy(f"http://127.0.0.1:{server.server_address[1]}/", timeout=2), handler
    finally:
        server.shutdown()
        server.server_close()


def test_a_toxic_is_added_with_toxiproxys_fields_and_removed_by_its_name(
    fake: tuple[Toxiproxy, type[_FakeToxiproxy]],
) -> None:
    proxy, server = fake
    added = proxy.add_toxic("redis", "latency", attributes={"latency": 300})
    assert server.seen[-1] == (
        "POST",
        "/proxies/redis/toxics",
        {
            "name": "latency_downstream",
            "type": "latency",
            "stream": "downstream",
            "toxicity": 1.0,
            "attributes": {"latency": 300},
        },
    )
    assert added["name"] == "latency_downstream"
    assert [t["name"] for t in proxy.toxics("redis")] == ["latency_downstream"]
    proxy.add_toxic(
        "redis", "timeout", name="cut", stream="upstream", toxicity=0.5, attributes={"timeout": 0}
    )
    assert server.seen[-1][2]["stream"] == "upstream"
    assert server.seen[-1][2]["toxicity"] == 0.5
    proxy.remove_toxic("redis", "latency_downstream")
    assert server.seen[-1][:2] == ("DELETE", "/proxies/redis/toxics/latency_downstream")
    assert list(server.toxics) == ["cut"]


def test_refusals_carry_toxiproxys_reason_and_status(fake: tuple[Toxiproxy, type[_FakeToxiproxy]]) -> None:
    proxy, _ = fake
    proxy.add_toxic("redis", "latency", attributes={"latency": 1})
    with pytest.raises(
        ToxiproxyError, match=r"refused POST /proxies/redis/toxics: 409 toxic already exists"
    ) as dup:
        proxy.add_toxic("redis", "latency", attributes={"latency": 1})
    assert dup.value.status == 409
    with pytest.raises(ToxiproxyError, match="404 proxy not found") as missing:
        proxy.remove_toxic("kafka", "x")
    assert missing.value.status == 404


def test_disable_enable_and_reset(fake: tuple[Toxiproxy, type[_FakeToxiproxy]]) -> None:
    proxy, server = fake
    assert proxy.disable("redis")["enabled"] is False
    assert server.seen[-1] == ("POST", "/proxies/redis", {"enabled": False})
    assert proxy.proxies()["redis"]["enabled"] is False
    assert proxy.enable("redis")["enabled"] is True
    proxy.add_toxic("redis", "bandwidth", attributes={"rate": 1})
    proxy.disable("redis")
    proxy.reset()
    assert server.seen[-1][:2] == ("POST", "/reset")
    assert server.toxics == {}
    assert server.enabled is True
    assert proxy.version() == "2.5.0"


def test_bad_arguments_are_refused_before_a_request(fake: tuple[Toxiproxy, type[_FakeToxiproxy]]) -> None:
    proxy, server = fake
    with pytest.raises(ValueError, match="stream 'sideways'"):
        proxy.add_toxic("redis", "latency", stream="sideways")
    with pytest.raises(ValueError, match="toxicity 2"):
        proxy.add_toxic("redis", "latency", toxicity=2)
    assert server.seen == []


def test_a_proxy_that_does_not_answer_says_where_it_was_looked_for() -> None:
    with pytest.raises(
        ToxiproxyError, match=r"the fault proxy at http://127\.0\.0\.1:9 does not answer"
    ) as error:
        Toxiproxy("http://127.0.0.1:9", timeout=1).reset()
    assert error.value.status == 0
