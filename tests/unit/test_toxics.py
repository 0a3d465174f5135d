"""Toxics as Toxiproxy's users know them: checked before anything changes, then applied to real
local connections through a `ServiceForward` (its tunnel here is a plain TCP connection to a
local echo server, with the hooks the Kubernetes tunnels have)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testenv_api.status import PortStatus, ServiceStatus, WorkerStatus
from testenv_harness.ground.errors import TestEnvError
from testenv_harness.tunnel.portforward import ServiceForward
from testenv_harness.tunnel.toxics import Link, ToxicError, parse_settings, parse_toxic, reset_socket
from testenv_harness.worker.fault_control import FaultControl
from testenv_harness.worker.fault_wire import ControlClient
from testenv_harness.worker.network_faults import NetworkFaults

# -- checking -----------------------------------------------------------------------------------


def test_a_toxic_takes_toxiproxys_names_and_defaults() -> None:
    toxic = parse_toxic("latency", {"latency": "300", "jitter": 50})
    assert dict(toxic.attributes) == {"latency": 300, "jitter": 50}
    assert (toxic.stream, toxic.toxicity) == ("downstream", 1.0)
    assert parse_toxic("bandwidth", {"rate": 100, "stream": "upstream", "toxicity": "0.5"}).toxicity == 0.5
    assert dict(parse_toxic("slicer", {"average_size": 64}).attributes) == {
        "average_size": 64,
        "size_variation": 0,
        "delay": 0,
    }


@pytest.mark.parametrize(
    ("kind", "settings", "says"),
    [
        ("lag", {}, "unknown toxic 'lag': use one of latency (latency, jitter)"),
        (
            "latency",
            {"delay": 3},
            "latency has no attribute 'delay': its attributes are latency, jitter, stream",
        ),
        ("latency", {"latency": "fast"}, "latency latency='fast': give a whole number of ms"),
        ("latency", {"latency": -1}, "at least 0"),
        ("bandwidth", {"rate": 1.5}, "bandwidth rate=1.5: give a whole number of KB/s"),
        ("latency", {"latency": True}, "give a whole number"),
        ("timeout", {"stream": "up"}, "stream='up': use upstream (client to service) or downstream"),
        ("timeout", {"toxicity": 2}, "toxicity=2: give the probability"),
        ("timeout", {"toxicity": "often"}, "toxicity='often'"),
        ("slicer", {"average_size": 0}, "slicer average_size=0: give a whole number of bytes, at least 1"),
        ("slicer", {"average_size": 10, "size_variation": 10}, "keep it below average_size (10)"),
    ],
)
def test_bad_input_names_the_field_and_the_fix(kind: str, settings: dict[str, object], says: str) -> None:
    with pytest.raises(ToxicError, match=None) as caught:
        parse_toxic(kind, settings)
    assert says in str(caught.value)


def test_set_pairs_are_name_equals_value() -> None:
    assert parse_settings(["latency=300", " jitter = 5"]) == {"latency": "300", "jitter": "5"}
    with pytest.raises(ToxicError, match="--set 'latency': write NAME=VALUE"):
        parse_settings(["latency"])


# -- a forward without Kubernetes ----------------------------------------------------------------


class _PlainTunnel:
    """A local connection carried over plain TCP to the server, hooked as SpdyTunnel is."""

    def __init__(self, local: socket.socket, port: int) -> None:
        self.local = local
        self.remote = socket.create_connection(("127.0.0.1", port))
        self.link: Link | None = None
        self.closed = False
        threading.Thread(target=self._from_server, daemon=True).start()

    def _from_server(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.remote.recv(65536):
                if self.link is not None:
                    self.link.downstream.push(data)
                else:
                    self.to_client(data)
        if self.link is not None:
            self.link.downstream.end()
        else:
            self.server_ended()

    def run(self) -> None:
        with contextlib.suppress(OSError):
            while chunk := self.local.recv(65536):
                if self.link is not None:
                    self.link.upstream.push(chunk)
                else:
                    self.to_server(chunk)
            if self.link is not None:
                self.link.upstream.end().wait()
            self.remote.shutdown(socket.SHUT_WR)

    def to_server(self, data: bytes) -> None:
        self.remote.sendall(data)

    def to_client(self, data: bytes) -> None:
        self.local.sendall(data)

    def server_ended(self) -> None:
        with contextlib.suppress(OSError):
            self.local.shutdown(socket.SHUT_WR)

    def close(self, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if self.link is not None:
            self.link.close()
        if reset:
            reset_socket(self.local)
        else:
            with contextlib.suppress(OSError):
                self.local.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.remote.shutdown(socket.SHUT_RDWR)
        self.local.close()


class _Forwarder:
    """What ServiceForward asks of its forwarder, over plain TCP."""

    def __init__(self) -> None:
        self.forwards: list[ServiceForward] = []

    def serve(self, local: socket.socket, service: str, port: int, listener: ServiceForward) -> None:
        tunnel = _PlainTunnel(local, port)
        listener.toxics.attach(tunnel)
        try:
            tunnel.run()
        finally:
            listener.toxics.detach(tunnel)

    def listeners(self, service: str) -> list[ServiceForward]:
        return [f for f in self.forwards if f.service == service]


@pytest.fixture
def echo() -> Iterator[int]:
    """A server that echoes what it gets; `bye` at the end of a chunk makes it close after."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)
                if data.endswith(b"bye"):
                    return

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def forward(echo: int) -> Iterator[ServiceForward]:
    forwarder = _Forwarder()
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    listener = ServiceForward(forwarder, "cache", echo, port)  # type: ignore[arg-type]
    forwarder.forwards.append(listener)
    yield listener
    listener.close()


def _client(forward: ServiceForward, timeout: float = 5) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", forward.local_port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _exchange(sock: socket.socket, data: bytes) -> tuple[bytes, float]:
    started = time.monotonic()
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got, time.monotonic() - started


def _read_all(sock: socket.socket) -> bytes:
    got = b""
    while chunk := sock.recv(100):
        got += chunk
    return got


def _apply(forward: ServiceForward, kind: str, **settings: object) -> object:
    toxic = parse_toxic(kind, settings)
    forward.toxics.add(toxic)
    return toxic


# -- applying -----------------------------------------------------------------------------------


def test_without_a_toxic_a_connection_has_no_link(forward: ServiceForward) -> None:
    with _client(forward) as sock:
        assert _exchange(sock, b"ping")[0] == b"ping"
        assert all(t.link is None for t in forward.toxics._carriers)  # type: ignore[attr-defined]


def test_latency_delays_each_answer_also_on_open_connections_until_removed(forward: ServiceForward) -> None:
    with _client(forward) as sock:
        assert _exchange(sock, b"warm")[1] < 0.1
        toxic = _apply(forward, "latency", latency=200)
        for _ in range(2):
            got, took = _exchange(sock, b"ping")
            assert got == b"ping"
            assert 0.19 <= took < 0.5, took
        forward.toxics.remove(toxic)  # type: ignore[arg-type]
        assert min(_exchange(sock, b"ping")[1] for _ in range(3)) < 0.1  # (one may be slow on busy cores)


def test_stacked_latencies_add_up_and_upstream_delays_the_request(forward: ServiceForward) -> None:
    _apply(forward, "latency", latency=100)
    _apply(forward, "latency", latency=100, stream="upstream")
    _apply(forward, "latency", latency=100)
    with _client(forward) as sock:
        got, took = _exchange(sock, b"ping")
    assert got == b"ping"
    assert 0.29 <= took < 0.7, took


def test_queued_chunks_are_not_delayed_twice(forward: ServiceForward) -> None:
    _apply(forward, "latency", latency=200)
    with _client(forward) as sock:
        started = time.monotonic()
        for _ in range(5):
            sock.sendall(b"x" * 10)
            time.sleep(0.02)
        got = b""
        while len(got) < 50:
            got += sock.recv(100)
    assert time.monotonic() - started < 0.45


def test_bandwidth_caps_the_rate(forward: ServiceForward) -> None:
    _apply(forward, "bandwidth", rate=100)  # 100 KB/s
    with _client(forward) as sock:
        got, took = _exchange(sock, b"y" * 50_000)
    assert len(got) == 50_000
    assert 0.45 <= took < 1.5, took


def test_the_slicer_hands_pieces_on_with_pauses(forward: ServiceForward) -> None:
    _apply(forward, "slicer", average_size=100, size_variation=20, delay=20_000)
    with _client(forward) as sock:
        got, took = _exchange(sock, bytes(range(256)) * 4)
    assert got == bytes(range(256)) * 4
    assert took >= 0.15, took  # about ten pieces, 20 ms apart


def test_timeout_stops_data_then_closes(forward: ServiceForward) -> None:
    _apply(forward, "timeout", timeout=300)
    with _client(forward) as sock:
        started = time.monotonic()
        sock.sendall(b"ping")
        assert sock.recv(10) == b""
    assert 0.25 <= time.monotonic() - started < 1.5


def test_timeout_zero_stalls_until_removed(forward: ServiceForward) -> None:
    toxic = _apply(forward, "timeout", timeout=0)
    with _client(forward, timeout=0.4) as sock:
        sock.sendall(b"ping")
        with pytest.raises(TimeoutError):
            sock.recv(10)
        forward.toxics.remove(toxic)  # type: ignore[arg-type]
        assert _exchange(sock, b"pong")[0] == b"pong"


def test_reset_peer_resets(forward: ServiceForward) -> None:
    _apply(forward, "reset_peer", timeout=100)
    with _client(forward) as sock:
        sock.sendall(b"ping")
        time.sleep(0.3)
        with pytest.raises(ConnectionResetError):
            _read_all(sock)


def test_limit_data_closes_after_that_many_bytes(forward: ServiceForward) -> None:
    _apply(forward, "limit_data", bytes=10)
    with _client(forward) as sock:
        sock.sendall(b"z" * 100)
        assert _read_all(sock) == b"z" * 10


def test_slow_close_holds_the_servers_close(forward: ServiceForward) -> None:
    _apply(forward, "slow_close", delay=300)
    with _client(forward) as sock:
        got, _ = _exchange(sock, b"bye")
        started = time.monotonic()
        assert got == b"bye"
        assert sock.recv(10) == b""
    assert time.monotonic() - started >= 0.25


def test_toxicity_zero_spares_every_connection(forward: ServiceForward) -> None:
    _apply(forward, "latency", latency=500, toxicity=0)
    with _client(forward) as sock:
        assert max(_exchange(sock, b"ping")[1] for _ in range(3)) < 0.5  # none waits the 500 ms


def test_down_refuses_and_cuts_then_listens_again(forward: ServiceForward) -> None:
    with _client(forward) as open_one:
        _exchange(open_one, b"warm")
        assert forward.take_down() == 1
        assert open_one.recv(10) == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", forward.local_port), timeout=2)
    forward.bring_up()
    with _client(forward) as sock:
        assert _exchange(sock, b"back")[0] == b"back"


# -- a worker's faults, and the CLI's socket --------------------------------------------------------


def _worker(forward: ServiceForward, direct: bool = False) -> NetworkFaults:
    env = NetworkFaults.__new__(NetworkFaults)
    env.worker, env.direct = 1, direct
    env.forwarder = forward.forwarder  # type: ignore[assignment]
    ports = (PortStatus("main", forward.port, forward.local_port),)
    env.status = WorkerStatus(
        1, "ns-w1", "Ready", (ServiceStatus("cache", "redis", True, "cache.ns-w1.svc", ports),)
    )
    return env


def test_a_fault_ends_with_its_block_even_on_an_exception(forward: ServiceForward) -> None:
    env = _worker(forward)

    def failing_test() -> None:
        with env.fault("cache", "latency", latency=50) as fault:
            assert [f.describe() for f in env.faults()] == [fault.describe()]
            raise RuntimeError("the test failed")

    with pytest.raises(RuntimeError):
        failing_test()
    assert env.faults() == []
    assert forward.toxics.active == ()
    with env.fault("cache", "down"):
        assert forward.down
        assert env.faults()[0].kind == "down"
    assert not forward.down


def test_a_worker_checks_a_fault_before_changing_anything(forward: ServiceForward) -> None:
    env = _worker(forward)
    with pytest.raises(ToxicError, match="worker 1 has no service 'db'"):
        env.start_fault("db", "latency", latency=1)
    with pytest.raises(ToxicError, match="latency has no attribute 'rate'"):
        env.start_fault("cache", "latency", rate=1)
    with pytest.raises(ToxicError, match="down takes no attributes"):
        env.start_fault("cache", "down", timeout=1)
    assert env.faults() == []
    with pytest.raises(TestEnvError, match=r"connects directly .* --testenv-connect=forward"):
        _worker(forward, direct=True).start_fault("cache", "latency")


def test_the_fault_socket_applies_lists_holds_and_clears(forward: ServiceForward, tmp_path: Path) -> None:
    env = _worker(forward)
    control = FaultControl(env, tmp_path / "1.sock")
    try:
        assert (tmp_path / "1.sock").stat().st_mode & 0o777 == 0o600
        client = ControlClient(tmp_path / "1.sock")
        client.ask({"op": "add", "service": "cache", "toxic": "latency", "settings": {"latency": "5"}})
        assert client.ask({"op": "list"})["faults"][0]["latency"] == 5
        with pytest.raises(TestEnvError, match="unknown toxic 'lag'"):
            client.ask({"op": "add", "service": "cache", "toxic": "lag"})
        assert client.ask({"op": "clear", "service": None}) == {"cleared": 1}
        held = ControlClient(tmp_path / "1.sock")
        held.ask({"op": "add", "service": "cache", "toxic": "down", "hold": True})
        assert forward.down
        held.close()  # the command went away (Ctrl-C, kill): its fault ends with it
        deadline = time.monotonic() + 5
        while forward.down and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not forward.down
        client.close()
    finally:
        control.close()
    assert not (tmp_path / "1.sock").exists()
