"""Forwarding ahead of Ready: a worker on a cluster the harness made forwards as soon as its status
names its services, to pods whose containers run, and takes a service as ready when a ping as
strong as its pod's readiness probe answers through the forward."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from testenv_api import LABEL_SERVICE, Phase
from testenv_api.status import WorkerStatus
from testenv_harness.ground.waiting import WaitTimeoutError
from testenv_harness.services import catalog, probes
from testenv_harness.services.base import Ping
from testenv_harness.tunnel import portforward, spdy
from testenv_harness.tunnel.podwatch import PodWatch, is_started
from testenv_harness.tunnel.portforward import Forwarder, SpdyTunnel
from testenv_harness.worker.connection import WorkerConnection
from tests.unit.spdy_peer import plain

__all__ = ["plain"]  # the session fixture, for pytest to find here

PING = Ping.answered_by(b"PING\n", b"PONG")


def _pod(
    name: str, ready: bool, running: bool = True, created: str = "2026-12-07T08:00:00Z"
) -> dict[str, Any]:
    state = {"running": {}} if running else {"waiting": {"reason": "ContainerCreating"}}
    return {
        "metadata": {"name": name, "labels": {LABEL_SERVICE: "redis"}, "creationTimestamp": created},
        "status": {
            "phase": "Running" if running else "Pending",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "redis", "state": state}],
        },
    }


def _watch(seen: list[tuple[set[str], set[str]]]) -> PodWatch:
    watch = PodWatch.__new__(PodWatch)  # no API server: fed events by hand
    watch.namespace = "tp-test"
    watch._pods = {}
    watch._changed = threading.Condition()
    watch._synced = True
    watch.on_change = lambda ready, started: seen.append((ready, started))
    return watch


def test_the_pod_watch_keeps_started_pods_apart_from_ready_ones() -> None:
    seen: list[tuple[set[str], set[str]]] = []
    watch = _watch(seen)
    watch._apply(_pod("redis-a", ready=False, running=False), deleted=False)
    assert seen == []
    assert watch.started("redis") == []
    watch._apply(_pod("redis-a", ready=False), deleted=False)
    assert seen[-1] == (set(), {"redis-a"})
    assert (watch.ready("redis"), watch.started("redis")) == ([], ["redis-a"])
    watch._apply(_pod("redis-a", ready=True), deleted=False)
    assert seen[-1] == ({"redis-a"}, set())
    assert (watch.ready("redis"), watch.started("redis")) == (["redis-a"], [])
    deleting = _pod("redis-a", ready=True)
    deleting["metadata"]["deletionTimestamp"] = "2026-12-07T08:01:00Z"
    watch._apply(deleting, deleted=False)
    assert seen[-1] == (set(), set())
    assert not is_started(deleting)


def test_a_service_without_a_ready_pod_is_served_by_a_running_one_whose_first_bytes_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    forwarder = Forwarder.__new__(Forwarder)
    forwarder.namespace = "tp-test"
    forwarder.pods = _watch([])
    forwarder.pods._apply(_pod("redis-old", ready=True, created="2026-12-07T07:00:00Z"), deleted=False)
    chosen: list[tuple[str, float]] = []

    def tunnel(local: socket.socket, pod: str, port: int, hold: float) -> Any:
        chosen.append((pod, hold))
        raise ConnectionError("enough: the choice is made")

    monkeypatch.setattr(forwarder, "_tunnel", tunnel)
    listener = socket.create_server(("127.0.0.1", 0))
    for _ in range(2):
        client = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
        forwarder.serve(ours, "redis", 6379)
        client.close()
        forwarder.pods._apply(_pod("redis-old", ready=False, running=False), deleted=True)
        forwarder.pods._apply(_pod("redis-new", ready=False), deleted=False)
    listener.close()
    assert chosen == [("redis-old", 0.0), ("redis-new", portforward.UNREADY_HOLD_SECONDS)]


def test_a_held_connection_that_the_pod_refuses_sends_nothing_and_keeps_its_session(plain: Any) -> None:
    session, peer = plain
    client, local = socket.socketpair()
    tunnel = SpdyTunnel(local, session, 6379, 0, "redis-new", hold=5.0)
    client.sendall(b"PING\n")  # at once, as clients do
    runner = threading.Thread(target=tunnel.run, daemon=True)
    runner.start()
    for _ in range(3):
        peer.frame()  # two SYN_STREAMs and the error stream's FIN
    peer.send(spdy.data_frame(1, b"dial tcp4 127.0.0.1:6379: connect: connection refused"))
    peer.send(spdy.data_frame(1, b"", spdy.FLAG_FIN) + spdy.data_frame(3, b"", spdy.FLAG_FIN))
    client.settimeout(5)
    with contextlib.suppress(ConnectionResetError):  # its unread bytes make the close a reset
        assert client.recv(64) == b""
    runner.join(5)
    assert not runner.is_alive(), "the refusal must end the hold"
    peer.sends_no_data()
    assert not session.closed.is_set()
    client.close()


class _StartingServer:
    """Accepts from the start; answers only connections accepted once `ready` is set (a starting
    broker's listener is bound before it serves, and what it accepted early waits unanswered)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.ready = threading.Event()
        self.accepted = 0
        self._held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.server.accept()
                self.accepted += 1
                if not self.ready.is_set():
                    self._held.append(conn)
                    continue
                conn.recv(64)
                conn.sendall(b"PONG\n")
                conn.close()

    def close(self) -> None:
        self.server.close()
        for conn in self._held:
            conn.close()


def test_first_answer_does_not_wait_behind_a_try_the_server_accepted_early() -> None:
    server = _StartingServer()
    try:
        threading.Timer(0.5, server.ready.set).start()
        took = probes.first_answer(PING, server.port, timeout=10, what="starting")
    finally:
        server.close()
    assert server.accepted >= 2, "the answer came from a later try"
    assert took < 2.0, f"{took:.2f}s: it waited for the first try's own timeout"


def test_first_answer_times_out_naming_the_service() -> None:
    server = _StartingServer()
    try:
        with pytest.raises(WaitTimeoutError, match=r"kafka \(kafka\) on 127\.0\.0\.1:\d+ to answer as ready"):
            probes.first_answer(PING, server.port, timeout=0.6, what="kafka (kafka)")
    finally:
        server.close()


def test_only_types_whose_ping_matches_their_probe_are_taken_as_ready_ahead() -> None:
    ahead = {name for name, kind in catalog.TYPES.items() if kind.ready_ping is not None}
    assert ahead == {"redis", "kafka", "localstack", "moto"}
    health = catalog.TYPES["localstack"].ready_ping
    assert health is not None
    assert b"GET /_localstack/health " in health.request
    assert health.healthy(b"HTTP/1.1 200 OK\r\n")
    assert not health.healthy(b"HTTP/1.1 503 Service Unavailable\r\n")


def _status(phase: Phase, services: bool = True) -> dict[str, Any]:
    service = {"name": "redis", "type": "redis", "ready": False, "host": "redis.ns.svc", "url": "redis://x"}
    worker = {
        "index": 0,
        "namespace": "te-w0",
        "phase": phase.value,
        "services": [service] if services else [],
    }
    return {"status": {"phase": phase.value, "workers": [worker]}}


@pytest.mark.parametrize(
    ("statuses", "planned", "phase"),
    [
        (
            [_status(Phase.PROVISIONING, services=False), _status(Phase.PROVISIONING)],
            True,
            Phase.PROVISIONING,
        ),
        ([_status(Phase.PROVISIONING), _status(Phase.READY)], False, Phase.READY),
    ],
)
def test_a_worker_forwarding_ahead_waits_for_its_plan_not_its_ready(
    monkeypatch: pytest.MonkeyPatch, statuses: list[dict[str, Any]], planned: bool, phase: Phase
) -> None:
    conn = WorkerConnection.__new__(WorkerConnection)
    conn.worker = 0
    answers = iter(statuses)
    monkeypatch.setattr(conn, "_environment_object", lambda: next(answers))
    started = time.monotonic()
    status = conn._wait_for_worker(10, planned=planned)
    assert (status.phase, status.namespace) == (phase, "te-w0")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("provider", "ahead"), [("kind", True), ("local", False), ("existing", False)])
def test_a_worker_forwards_ahead_on_kind_only(
    monkeypatch: pytest.MonkeyPatch, provider: str, ahead: bool
) -> None:
    conn = WorkerConnection.__new__(WorkerConnection)
    conn.direct = False
    conn.spans = []
    conn.handoff = SimpleNamespace(provider=provider, forwarded=False, timeout=30.0)  # type: ignore[assignment]
    calls: list[str] = []
    status = WorkerStatus(0, "te-w0", Phase.PROVISIONING.value, ())

    def wait_for_worker(timeout: float, planned: bool = False) -> WorkerStatus:
        calls.append(f"wait planned={planned}")
        return status

    monkeypatch.setattr(conn, "_wait_for_worker", wait_for_worker)

    def forward(ahead: bool = False) -> WorkerConnection:
        calls.append(f"forward ahead={ahead}")
        return conn

    monkeypatch.setattr(conn, "forward", forward)
    conn.wait_and_forward()
    assert calls == [f"wait planned={ahead}", f"forward ahead={ahead}"]


def test_forwarding_does_not_import_the_core_api_a_starting_worker_would_wait_a_second_for() -> None:
    # kubernetes' CoreV1Api module takes about a second of CPU to import (3-5 s on two cores busy
    # starting Kafka brokers): the pod watch a worker forwards with makes its requests without it.
    code = (
        "import sys\n"
        "from kubernetes import client\n"
        "from testenv_harness.tunnel.portforward import Forwarder\n"
        "api = client.ApiClient(client.Configuration(host='http://127.0.0.1:9'))\n"
        "forwarder = Forwarder(api, 'tp-test')\n"
        "forwarder.listen('redis', 6379, 0)\n"
        "forwarder.close()\n"
        "print('kubernetes.client.api.core_v1_api' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
