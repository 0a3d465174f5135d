"""The tunnel never hangs and never balloons: teardown under a peer that reads nothing, the
buffer toward a client that reads nothing, and what the server may make us inflate or parse.

Every peer here is a real socket (a socketpair or local TCP). A call that could hang runs in a
daemon thread joined with a timeout, so a regression fails the test instead of hanging the run.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import select
import socket
import struct
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator

import pytest
import websocket

from testenv_harness.ground.waiting import wait_for
from testenv_harness.tunnel import portforward, spdy
from testenv_harness.tunnel.portforward import ChannelTunnel, Forwarder, SpdyTunnel
from testenv_harness.tunnel.wspipe import WebsocketPipe
from tests.unit.spdy_peer import FakeWebsocket, Peer, end_session, plain

__all__ = ["plain"]  # the session fixture, for pytest to find here

MiB = 1024 * 1024
#: What a teardown may take at most here (it takes milliseconds; CI machines are shared).
BOUND = 3.0


def timed(call: Callable[[], object], limit: float = BOUND) -> float:
    """Seconds `call` took; fails (leaving the call behind, in a daemon thread) past `limit`."""
    done = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            done.set()

    start = time.monotonic()
    threading.Thread(target=target, daemon=True).start()
    assert done.wait(limit), f"{getattr(call, '__name__', call)} did not return within {limit}s"
    if errors:
        raise errors[0]
    return time.monotonic() - start


def background(call: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


def _full(sock: socket.socket) -> bool:
    """True once `sock` cannot take another byte (its peer reads nothing)."""
    return not select.select([], [sock], [], 0)[1]


@pytest.fixture
def stalled() -> Iterator[tuple[spdy.Session, WebsocketPipe, socket.socket]]:
    """A session over a websocket pipe whose peer reads nothing at all (it is never read)."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    pipe = WebsocketPipe(FakeWebsocket(ours), idle=0.2)  # type: ignore[arg-type]
    session = spdy.Session(pipe.send, pipe.receive, "test/stalled")
    session.on_close = pipe.close
    threading.Thread(target=session.run, daemon=True).start()
    yield session, pipe, theirs
    end_session(session)
    theirs.close()


def _open(session: spdy.Session) -> list[spdy.Stream]:
    return session.open(
        [{"streamtype": "error", "port": "1"}, {"streamtype": "data", "port": "1"}],
        [(lambda _b: None, lambda _r: None), (lambda _b: None, lambda _r: None)],
        fin=[True, False],
    )


# -- a peer that reads nothing: nothing waits for it forever ------------------------------


def test_forget_ping_and_close_finish_while_an_upload_waits_on_a_peer_that_reads_nothing(
    stalled: tuple[spdy.Session, WebsocketPipe, socket.socket],
) -> None:
    session, pipe, _ = stalled
    _, data = _open(session)
    upload, errors = background(lambda: data.send(b"u" * 64 * MiB))
    wait_for(lambda: _full(pipe.sock), timeout=5, what="the upload filled the socket", interval=0.01)
    time.sleep(0.2)  # the uploader is now waiting for the peer, holding the session's writer

    timed(lambda: session.forget(data.id))
    timed(session.ping)  # skipped: a write is under way, so the connection is not idle
    took = timed(lambda: session.close("teardown"))
    assert took < 1.5, f"close took {took:.2f}s"
    upload.join(BOUND)
    assert not upload.is_alive(), "the blocked upload did not fail when the session closed"
    assert errors
    assert isinstance(errors[0], spdy.SessionClosedError)


def test_a_send_the_peer_takes_nothing_of_times_out_and_ends_the_session(
    stalled: tuple[spdy.Session, WebsocketPipe, socket.socket],
) -> None:
    session, pipe, _ = stalled
    pipe.send_timeout = 0.5
    _, data = _open(session)
    upload, errors = background(lambda: data.send(b"u" * 64 * MiB))
    upload.join(5)
    assert not upload.is_alive(), "a send with no progress did not time out"
    assert errors
    assert isinstance(errors[0], spdy.SessionClosedError)
    assert session.closed.is_set()
    assert "took no data for 0.5s" in session.reason


def test_a_failed_write_closes_the_session_instead_of_deadlocking_it() -> None:
    def broken(_frames: bytes) -> None:
        raise BrokenPipeError("the API server went away")

    session = spdy.Session(broken, lambda: b"", "test/broken")
    with pytest.raises(spdy.SessionClosedError):
        timed(lambda: session.write(b"frame"))
    assert session.closed.is_set()
    assert session.reason == "write failed: the API server went away"
    timed(lambda: session.close("again"))  # and nothing is left holding a lock


def test_a_pipe_closes_at_once_while_a_send_waits_on_a_peer_that_reads_nothing() -> None:
    ours, theirs = socket.socketpair()
    pipe = WebsocketPipe(FakeWebsocket(ours))  # type: ignore[arg-type]
    sender, errors = background(lambda: pipe.send(b"u" * 16 * MiB))
    wait_for(lambda: _full(ours), timeout=5, what="the send filled the socket", interval=0.01)
    took = timed(pipe.close)
    assert took < 0.5, f"close waited {took:.2f}s for a send the peer never reads"
    sender.join(BOUND)
    assert not sender.is_alive()
    assert errors
    assert isinstance(errors[0], (ConnectionError, OSError))
    theirs.close()


def test_tearing_down_a_forward_whose_upload_is_stalled_takes_no_time() -> None:
    """What a worker's teardown does (Forwarder.drop_pods) with a client mid-upload."""
    ours, theirs = socket.socketpair()  # the API server's end: it never reads
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    pipe = WebsocketPipe(FakeWebsocket(ours), idle=0.2)  # type: ignore[arg-type]
    session = spdy.Session(pipe.send, pipe.receive, "test/pod-a")
    session.on_close = pipe.close
    threading.Thread(target=session.run, daemon=True).start()
    client, local = socket.socketpair()
    tunnel = SpdyTunnel(local, session, 6379, 0, "pod-a")
    runner, _ = background(tunnel.run)
    background(lambda: client.sendall(b"u" * 64 * MiB))
    wait_for(lambda: _full(ours), timeout=5, what="the upload filled the API server's socket", interval=0.01)
    time.sleep(0.2)

    # A forwarder with just what drop_pods uses: its sessions and tunnels.
    forwarder = Forwarder.__new__(Forwarder)
    forwarder._lock = threading.Lock()
    forwarder._sessions = {"pod-a": [session]}
    forwarder.tunnels = {tunnel}
    took = timed(lambda: forwarder.drop_pods(lambda _pod: True))
    assert took < 1.5, f"the teardown took {took:.2f}s"
    runner.join(BOUND)
    assert not runner.is_alive(), "the connection's thread outlived the teardown"
    client.settimeout(BOUND)
    with contextlib.suppress(ConnectionResetError):
        while client.recv(65536):
            pass  # the client sees its connection end
    client.close()
    theirs.close()


# -- a client that reads nothing: a bounded buffer, push-back, then a reset ---------------


def _held(tunnel: SpdyTunnel) -> int:
    """Bytes the tunnel holds for its client (summed from its queue where it does not count them)."""
    if hasattr(tunnel, "buffered"):
        return tunnel.buffered
    while True:
        with contextlib.suppress(RuntimeError):  # the queue changed while it was summed
            return sum(len(chunk) for chunk in tunnel._pending)


def _flood(peer: Peer, stream_id: int, total: int, frame: int = 64 * 1024) -> None:
    block = b"f" * frame
    with contextlib.suppress(OSError):
        for _ in range(total // frame):
            peer.sock.sendall(spdy.data_frame(stream_id, block))


def test_a_client_that_reads_nothing_holds_a_bounded_buffer_and_is_reset_alone(
    plain: tuple[spdy.Session, Peer], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # raising=False: the same test runs, and fails, against code without the bound.
    monkeypatch.setattr(portforward, "CLIENT_BUFFER", 1 * MiB, raising=False)
    monkeypatch.setattr(portforward, "CLIENT_STALL_SECONDS", 1.0, raising=False)
    session, peer = plain
    stuck_client, stuck_local = socket.socketpair()
    reader_client, reader_local = socket.socketpair()
    for sock in (stuck_client, stuck_local):  # little kernel buffering: the harness's shows
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    stuck = SpdyTunnel(stuck_local, session, 1, 0, "pod-a")  # streams 1 (error), 3 (data)
    alive = SpdyTunnel(reader_local, session, 1, 1, "pod-a")  # streams 5, 7
    for _ in range(6):
        peer.frame()  # two SYN_STREAMs and a FIN per tunnel

    caplog.set_level(logging.WARNING, logger=portforward.__name__)
    tracemalloc.start()
    try:
        start = time.monotonic()
        flood, _ = background(lambda: _flood(peer, 3, 64 * MiB))
        # (Code without the flag goes on to the bounds below, and fails there.)
        wait_for(
            lambda: getattr(session, "held", True),
            timeout=10,
            what="the reader waited for the client",
            interval=0.01,
        )
        reset = peer.until(True, spdy.RST_STREAM, timeout=10)
        reset_after = time.monotonic() - start
        flood.join(20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert struct.unpack(">II", reset[3]) == (3, spdy.RST_CANCEL)
    assert peak < 8 * MiB, f"{peak / MiB:.1f} MiB held for a client that reads nothing"
    assert reset_after < 6, f"the stuck connection was reset only after {reset_after:.1f}s"
    assert "the client took nothing for 1s" in caplog.text
    assert "resetting its connection" in caplog.text
    assert not flood.is_alive(), "the session stopped reading for good"
    # The session goes on: the other connection on it still gets its bytes.
    peer.sock.sendall(spdy.data_frame(7, b"+PONG\r\n"))
    reader_client.settimeout(5)
    assert reader_client.recv(64) == b"+PONG\r\n"
    assert stuck.buffered == 0
    assert not session.held
    alive.close()
    for sock in (stuck_client, reader_client):
        sock.close()


def test_a_slow_client_gets_every_byte_in_order_through_push_back(
    plain: tuple[spdy.Session, Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slow is not stuck: the reader waits for it (the pod is slowed down) and resets nothing."""
    monkeypatch.setattr(portforward, "CLIENT_BUFFER", 256 * 1024, raising=False)
    monkeypatch.setattr(portforward, "CLIENT_STALL_SECONDS", 1.0, raising=False)
    session, peer = plain
    client, local = socket.socketpair()
    for sock in (client, local):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    tunnel = SpdyTunnel(local, session, 1, 0, "pod-a")
    for _ in range(3):
        peer.frame()
    sent = bytes(range(256)) * (4 * MiB // 256)
    frames = b"".join(spdy.data_frame(3, sent[i : i + 48 * 1024]) for i in range(0, len(sent), 48 * 1024))
    background(lambda: peer.sock.sendall(frames + spdy.data_frame(3, b"", spdy.FLAG_FIN)))

    most = 0
    received = bytearray()
    client.settimeout(5)
    was_behind = False
    while chunk := client.recv(32 * 1024):
        received += chunk
        most = max(most, _held(tunnel))
        was_behind = was_behind or bool(getattr(session, "behind", None))
        time.sleep(0.005)  # about 6 MB/s: far slower than the session delivers
    assert received == sent
    assert was_behind, "the session never showed a client behind"
    assert not session.behind, "every byte was taken: nobody is behind"
    assert most <= 256 * 1024 + 48 * 1024
    peer.sock.settimeout(0.2)
    with contextlib.suppress(TimeoutError):
        while True:
            control, kind, _, _ = peer.frame()
            assert (control, kind) != (True, spdy.RST_STREAM), "a slow client was reset"
    tunnel.close()
    client.close()


REFUSAL = b"error forwarding port 6390 to pod: dial tcp4 127.0.0.1:6390: connect: connection refused"


def _refuse(peer: Peer, error_stream: int, data_stream: int) -> None:
    """What the kubelet (containerd) does when nothing listens on the port, in its order: end the
    data stream, then say why on the error stream and end it (and never read the data stream)."""
    peer.send(
        spdy.data_frame(data_stream, b"", spdy.FLAG_FIN)
        + spdy.data_frame(error_stream, REFUSAL)
        + spdy.data_frame(error_stream, b"", spdy.FLAG_FIN)
    )


def _timers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if isinstance(t, threading.Timer)}


def test_a_refused_connection_that_carried_bytes_closes_its_session(
    plain: tuple[spdy.Session, Peer], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server never reads a refused stream's bytes, and its frame worker for that stream waits
    # for a reader for good: five of them and the session answers nothing. It must not be reused.
    monkeypatch.setattr(portforward, "REFUSAL_GRACE_SECONDS", 30.0)  # the verdict comes well before
    before = _timers()
    session, peer = plain
    client, local = socket.socketpair()
    tunnel = SpdyTunnel(local, session, 6390, 0, "pod-a")  # streams 1 (error), 3 (data)
    runner, _ = background(tunnel.run)
    client.sendall(b"PING\r\n")
    for _ in range(3):
        peer.frame()  # two SYN_STREAMs and the error stream's FIN
    assert peer.frame()[1:] == (3, 0, b"PING\r\n")
    caplog.set_level(logging.INFO, logger=portforward.__name__)
    peer.send(spdy.data_frame(3, b"", spdy.FLAG_FIN))  # the kubelet ends the data stream first ...
    readable, _, _ = select.select([client], [], [], 0.3)
    assert not readable, "the client saw its end before the error said whether the session is safe"
    peer.send(spdy.data_frame(1, REFUSAL) + spdy.data_frame(1, b"", spdy.FLAG_FIN))  # ... then why
    assert session.closed.wait(5), "the session stayed in use after a refused stream got bytes"
    assert "connection refused" in session.reason
    assert "closing its session" in caplog.text
    client.settimeout(5)
    assert client.recv(64) == b"", "the client must see its connection end"
    runner.join(5)
    assert not runner.is_alive()
    for timer in _timers() - before:
        timer.join(2)
        assert not timer.is_alive(), "a grace timer sleeps on after the verdict came"
    client.close()


def _sent(session: spdy.Session, peer: Peer, first: bytes) -> tuple[socket.socket, threading.Thread]:
    """A client whose connection (streams 1 and 3) has sent `first`, and the connection's thread;
    the peer has read the two SYN_STREAMs, the error stream's FIN and `first`."""
    client, local = socket.socketpair()
    tunnel = SpdyTunnel(local, session, 6379, 0, "pod-a")
    runner, _ = background(tunnel.run)
    client.sendall(first)
    for _ in range(4):
        peer.frame()
    return client, runner


def test_an_error_after_the_pod_answered_leaves_the_session_open(plain: tuple[spdy.Session, Peer]) -> None:
    # The connection was made (the pod answered), so the kubelet read what it carried: an error
    # ending it (the pod's server reset it) leaves the session's other connections alone.
    session, peer = plain
    client, runner = _sent(session, peer, b"PING\r\n")
    peer.send(spdy.data_frame(3, b"+PONG\r\n"))
    client.settimeout(5)
    assert client.recv(64) == b"+PONG\r\n"
    _refuse(peer, 1, 3)  # an error now: "connection reset by peer", say
    with contextlib.suppress(ConnectionResetError):
        assert client.recv(64) == b""
    runner.join(5)
    assert not session.closed.is_set()
    client.close()


@pytest.mark.parametrize("error_stream_ends", [True, False])
def test_a_server_that_closes_without_a_word_ends_the_client_without_harm(
    plain: tuple[spdy.Session, Peer], monkeypatch: pytest.MonkeyPatch, error_stream_ends: bool
) -> None:
    # Not a refusal: the pod's server took the bytes and closed. The error stream ends with no
    # message (the client sees its end then), or never (it sees it after REFUSAL_GRACE_SECONDS).
    monkeypatch.setattr(portforward, "REFUSAL_GRACE_SECONDS", 0.5)
    session, peer = plain
    client, runner = _sent(session, peer, b"QUIT\r\n")
    peer.send(
        spdy.data_frame(3, b"", spdy.FLAG_FIN)
        + (spdy.data_frame(1, b"", spdy.FLAG_FIN) if error_stream_ends else b"")
    )
    client.settimeout(5)
    assert client.recv(64) == b""
    runner.join(5)
    assert not session.closed.is_set()
    client.close()


def test_a_refused_connection_that_sent_nothing_leaves_its_session_open(
    plain: tuple[spdy.Session, Peer],
) -> None:
    # Nothing of it waits on the server: the session goes on serving, and a byte the client
    # writes afterwards is never sent on the refused stream.
    session, peer = plain
    client, local = socket.socketpair()
    tunnel = SpdyTunnel(local, session, 6390, 0, "pod-a")
    for _ in range(3):
        peer.frame()
    _refuse(peer, 1, 3)
    client.settimeout(5)
    assert client.recv(64) == b""
    with contextlib.suppress(OSError):
        client.sendall(b"late")
    tunnel.run()  # returns at once: the pod has refused
    peer.sends_no_data()
    assert not session.closed.is_set()
    client.close()


def _sessions(*names: str) -> list[spdy.Session]:
    return [spdy.Session(lambda _b: None, lambda: b"", f"test/{name}") for name in names]


def _forwarder(sessions: list[spdy.Session]) -> Forwarder:
    forwarder = Forwarder.__new__(Forwarder)  # only what session() uses
    forwarder._lock = threading.Lock()
    forwarder._opening = {}
    forwarder.namespace = "tp-test"
    forwarder._sessions = {"pod-a": sessions}
    forwarder._underway = {"pod-a": 1}  # one is on its way: no background opens here
    forwarder.channels_only = False
    forwarder.closed = False
    return forwarder


def test_an_upgrade_the_server_never_answers_fails_within_the_handshake_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A pod's sessions open one at a time: a hung upgrade used to hold up every later connection.
    from testenv_harness.ground import k8s

    monkeypatch.setattr(portforward, "HANDSHAKE_SECONDS", 0.5, raising=False)
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does), never answers
    try:
        api = k8s.client.ApiClient(
            k8s.client.Configuration(host=f"http://127.0.0.1:{silent.getsockname()[1]}")
        )
        started = time.monotonic()
        with pytest.raises((TimeoutError, websocket.WebSocketTimeoutException)):
            portforward.open_session(api, "tp-test", "pod-a")
        assert time.monotonic() - started < 5
    finally:
        silent.close()


def test_new_connections_go_to_a_session_that_no_slow_client_holds_up() -> None:
    idle, held = _sessions("idle", "held")
    _open(idle)  # the idle one carries more streams ...
    held.held = True  # ... but the other's reader waits for a slow client
    forwarder = _forwarder([held, idle])
    assert forwarder.session("pod-a") is idle
    held.held = False
    assert forwarder.session("pod-a") is held


def test_a_session_with_a_client_behind_is_chosen_after_those_without() -> None:
    # Its reader is not waiting yet, but will be once that client's bytes pass CLIENT_BUFFER: a
    # connection opened on it now would wait with it.
    quiet, behind = _sessions("quiet", "behind")
    _open(quiet)
    _open(quiet)
    behind.behind.add(3)
    assert _forwarder([behind, quiet]).session("pod-a") is quiet


def test_a_connection_its_client_has_closed_does_not_count_against_its_session() -> None:
    # kwok never ends a stream itself: a closed connection's streams linger LINGER_SECONDS, and a
    # new connection must not join the one session whose client is still connected (and may be
    # about to stop reading) because the other has more of those.
    lingering, connected = _sessions("lingering", "connected")
    for _ in range(2):
        _open(lingering)[1].finish()
    _open(connected)
    assert (lingering.streams, connected.streams) == (4, 2)
    assert _forwarder([connected, lingering]).session("pod-a") is lingering


def test_when_every_session_waits_or_may_wait_for_a_slow_client_a_new_one_is_opened(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held, behind, fresh = _sessions("held", "behind", "new")
    held.held = True
    behind.behind.add(3)
    forwarder = _forwarder([held, behind])
    opened: list[bool] = []

    def open_one(pod: str, only_if_none: bool) -> spdy.Session:
        opened.append(only_if_none)
        return fresh

    monkeypatch.setattr(forwarder, "_open", open_one)
    assert forwarder.session("pod-a") is fresh
    assert opened == [False]

    def refused(pod: str, only_if_none: bool) -> spdy.Session:
        raise ConnectionError("the API server refused the upgrade")

    monkeypatch.setattr(forwarder, "_open", refused)
    assert forwarder.session("pod-a") is behind  # the busy one still serves


# -- what the server may make us inflate or parse ------------------------------------------


def _compressed(block: bytes) -> bytes:
    deflate = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, 9, zdict=spdy.DICTIONARY)
    return deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)


def test_a_header_block_that_inflates_past_the_bound_ends_the_session(
    plain: tuple[spdy.Session, Peer], caplog: pytest.LogCaptureFixture
) -> None:
    session, peer = plain
    received: list[bytes] = []
    session.open(
        [{"streamtype": "error"}, {"streamtype": "data"}],
        [(lambda _b: None, lambda _r: None), (received.append, lambda _r: None)],
        fin=[True, False],
    )
    for _ in range(3):
        peer.frame()
    # One compression context per direction, as the server keeps: a normal reply goes through.
    deflate = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, 9, zdict=spdy.DICTIONARY)
    reply = deflate.compress(spdy.encode_headers({"streamtype": "data"})) + deflate.flush(zlib.Z_SYNC_FLUSH)
    peer.sock.sendall(spdy.control_frame(spdy.SYN_REPLY, struct.pack(">I", 3) + reply))
    peer.sock.sendall(spdy.data_frame(3, b"ok"))
    wait_for(
        lambda: received == [b"ok"], timeout=5, what="the data after a normal reply arrived", interval=0.01
    )

    bomb = deflate.compress(spdy.encode_headers({"x": "a" * (64 * MiB)})) + deflate.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 256 * 1024  # some compressed kilobytes ...
    tracemalloc.start()
    try:
        peer.sock.sendall(spdy.control_frame(spdy.SYN_REPLY, struct.pack(">I", 1) + bomb))
        closed = session.closed.wait(10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert closed, "a header block of 64 MiB was taken"
    assert peak < 8 * MiB, f"{peak / MiB:.0f} MiB inflated"  # ... that must not become 64 MiB
    assert session.reason == f"protocol error: a header block inflates to over {spdy.MAX_HEADER_BLOCK} bytes"
    assert "closing it" in caplog.text
    goaway = peer.until(True, spdy.GOAWAY, timeout=5)
    assert struct.unpack(">II", goaway[3]) == (0, spdy.GOAWAY_PROTOCOL_ERROR)


def test_many_frames_in_one_message_are_parsed_in_linear_time() -> None:
    """A message of 200,000 small frames (4.8 MB): copying the rest after each frame is quadratic.

    Measured on a 2-core machine: 0.3 s by offsets, 12.7 s copying the rest (4.9 s for half as many).
    """
    count, payload = 200_000, b"0123456789abcdef"
    message = spdy.data_frame(3, payload) * count
    received: list[bytes] = []
    messages = iter([message, b""])
    session = spdy.Session(lambda _b: None, lambda: next(messages), "test/frames")
    session.open(
        [{"streamtype": "error"}, {"streamtype": "data"}],
        [(lambda _b: None, lambda _r: None), (received.append, lambda _r: None)],
        fin=[True, False],
    )
    took = timed(session.run, limit=30)
    assert len(received) == count
    assert set(received) == {payload}
    assert took < 3, f"{count} frames took {took:.1f}s"


def test_a_websocket_frame_announcing_more_than_the_bound_is_refused_before_buffering() -> None:
    ours, theirs = socket.socketpair()
    pipe = WebsocketPipe(FakeWebsocket(ours), idle=0.1)  # type: ignore[arg-type]
    theirs.sendall(bytes([0x82, 127]) + struct.pack(">Q", 1 << 40) + b"x" * 1024)
    results: list[bytes] = []
    with pytest.raises(ConnectionError, match="a websocket frame of 1099511627776 bytes"):
        timed(lambda: results.append(pipe.receive()))
    pipe.close()
    theirs.close()


# -- the websocket fallback: close never waits on the websocket's send lock ---------------


class _ChannelServer:
    """A websocket server that accepts v4.channel.k8s.io, sends the two port frames, reads nothing."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.conns.append(conn)
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
        )
        port = struct.pack("<H", 6379)
        conn.sendall(bytes([0x82, 3, 0]) + port + bytes([0x82, 3, 1]) + port)

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.listener.close()


def test_closing_a_channel_tunnel_does_not_wait_for_its_stalled_upload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = _ChannelServer()

    def connect(
        _api: object, _namespace: str, _pod: str, protocol: str, _query: str = ""
    ) -> websocket.WebSocket:
        return websocket.create_connection(f"ws://127.0.0.1:{server.port}/", subprotocols=[protocol])

    monkeypatch.setattr(portforward, "_connect", connect)
    client, local = socket.socketpair()
    tunnel = ChannelTunnel(local, None, "ns", "pod-a", 6379)  # type: ignore[arg-type]
    runner, _ = background(tunnel.run)
    background(lambda: client.sendall(b"u" * 64 * MiB))
    ws_sock = tunnel.ws.sock
    assert ws_sock is not None
    wait_for(
        lambda: _full(ws_sock), timeout=10, what="the upload filled the websocket's socket", interval=0.01
    )
    time.sleep(0.2)  # the connection's thread now waits in a send, holding the websocket's lock

    took = timed(tunnel.close)
    assert took < 1.5, f"close took {took:.2f}s"
    runner.join(BOUND)
    assert not runner.is_alive(), "the connection's thread outlived close"
    client.close()
    server.close()
