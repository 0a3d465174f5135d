"""Local TCP listeners that forward through the API server's pod port-forward, like kubectl.

`Forwarder` serves one worker namespace. It keeps one pod watch (`PodWatch`) and, per ready
pod, one SPDY session tunnelled through a websocket, opened as soon as the pod is ready. A
new local connection opens a stream pair on that session: no LIST, no TLS handshake, no wait
for a reply before the first bytes go out. When a pod stops running its session is closed,
so clients see their server go away and reconnect to the new pod, exactly as they would to a
restarted server; a server closing a connection is seen by the client too (the stream ends).
A service with no Ready pod is served by one whose containers run, as `kubectl port-forward`
would: a worker starting up sees its server answer before the kubelet's next probe.

A connection the pod refuses (nothing listens on the port yet) must not have sent bytes: the
kubelet's side never reads them, and that blocks its session for good (`SpdyTunnel._error_end`).
So to a pod that is not Ready a connection's first bytes wait UNREADY_HOLD_SECONDS for a
refusal; one that comes later still closes the session, and the next connection opens another.

API servers without the SPDY tunnel (before Kubernetes 1.31, or with the PortForwardWebsockets
gate off) get the websocket channel protocol instead: one websocket per connection.

Nothing here waits or buffers without a bound. Closing never waits for a write (a session's
close shuts its socket down, failing any send the API server is not reading); a client that
reads slower than its pod writes holds at most CLIENT_BUFFER bytes here before the session's
reader pushes back, and one that reads nothing for CLIENT_STALL_SECONDS is reset (SpdyTunnel).

Faults (toxics.py) hook in at one place per direction: a connection with a `link` hands its
chunks to the link's pipelines, which pass them on after the toxics; one without (every
connection while its listener has no toxic) takes the path above, unchanged.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from websocket import ABNF, WebSocket, WebSocketBadStatusException, WebSocketException

from testenv_harness.ground import k8s
from testenv_harness.ground.errors import PortBusyError
from testenv_harness.tunnel.podwatch import PodWatch
from testenv_harness.tunnel.spdy import Session, SessionClosedError
from testenv_harness.tunnel.toxics import Link, Toxics, reset_socket
from testenv_harness.tunnel.wspipe import WebsocketPipe

log = logging.getLogger(__name__)
SPDY_TUNNEL = "SPDY/3.1+portforward.k8s.io"
CHANNELS = "v4.channel.k8s.io"
_DATA, _ERROR = 0, 1
_CHUNK = 256 * 1024
#: Most SPDY sessions (TCP connections to the API server) kept per pod.
MAX_SESSIONS = 4
#: How long a connection the client closed waits for the server's end before it is reset.
LINGER_SECONDS = 5
#: Sessions opened as soon as a pod is ready, so a burst of connections spreads from the start.
WARM_SESSIONS = 2
#: Bytes one connection holds for a client that reads slower than its pod writes, beyond what
#: the kernel's socket buffers already hold; past it the session's reader waits for the client.
CLIENT_BUFFER = 4 * 1024 * 1024
#: Seconds the session's reader waits for such a client to take any byte before resetting it.
CLIENT_STALL_SECONDS = 5.0
#: Most bytes kept of what a pod's error stream says (a line or two, normally).
MAX_ERROR = 16 * 1024
#: Bytes handed to a slow client per system call, so its progress is seen as it happens.
_PIECE = 64 * 1024
#: The websocket fallback: seconds a read or write may wait on the API server, and the goodbye.
CHANNEL_TIMEOUT = 30.0
#: Seconds a port-forward's websocket may take to connect and upgrade (the API server asks the
#: kubelet first); past it the attempt fails, and the next connection tries again.
HANDSHAKE_SECONDS = 10.0
CHANNEL_CLOSE_SECONDS = 0.5
#: Seconds the error stream of a connection whose client sent bytes and got none back is kept
#: after the data stream ended: a refusal's message comes just after that end.
REFUSAL_GRACE_SECONDS = 2.0
#: Seconds a new connection to a pod that is not Ready holds its first bytes, for the refusal of
#: a port nothing listens on yet to arrive first (a few milliseconds on kind).
UNREADY_HOLD_SECONDS = 0.1


class TunnelUnsupportedError(ConnectionError):
    """The API server does not tunnel SPDY through websockets."""


def stream_headers(api: k8s.client.ApiClient, path: str, protocol: str) -> dict[str, Any]:
    """The port-forward request's headers, authenticated the way the client authenticates any call.

    The client's own auth path runs the kubeconfig's credential refresh (exec plugins such as
    EKS's and GKE's, expiring tokens) before it reads the token; client certificates and
    proxies are applied by `_connect` from the same configuration.
    """
    headers: dict[str, Any] = {"sec-websocket-protocol": protocol}
    api.update_params_for_auth(headers, [], ["BearerToken"], path, "GET", None)
    return headers


def _connect(
    api: k8s.client.ApiClient, namespace: str, pod: str, protocol: str, query: str = ""
) -> WebSocket:
    """The port-forward websocket to `pod`, authenticated, TLS-configured and proxied as the
    client's own calls are, connected and upgraded within HANDSHAKE_SECONDS. (The client's
    `create_websocket` sets no bound, and a pod's sessions open one at a time: one upgrade the
    API server never answered would hold up every later connection to that pod for good.)"""
    cfg = api.configuration
    host = cfg.host.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    path = f"/api/v1/namespaces/{namespace}/pods/{pod}/portforward"
    url = f"{host}{path}{query}"
    headers = stream_headers(api, path, protocol)
    header = [f"sec-websocket-protocol: {protocol}"]
    if "authorization" in headers:
        header.append(f"authorization: {headers['authorization']}")
    options: dict[str, Any] = {"header": header, "timeout": HANDSHAKE_SECONDS}
    if cfg.proxy or cfg.proxy_headers:
        options = k8s.websocket_proxycare(options, cfg, url, headers)
    ws = WebSocket(sslopt=_tls_options(cfg), skip_utf8_validation=False)
    ws.connect(url, **options)  # type: ignore[no-untyped-call]
    return ws


def _tls_options(cfg: Any) -> dict[str, Any]:
    """websocket-client's TLS options for the client configuration `cfg`."""
    if not (cfg.host.startswith("https://") and cfg.verify_ssl):
        return {"cert_reqs": ssl.CERT_NONE}
    import certifi  # the client's own fallback bundle, as its REST calls use

    tls: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": cfg.ssl_ca_cert or certifi.where()}
    if cfg.assert_hostname is not None:
        tls["check_hostname"] = cfg.assert_hostname
    for key, value in (
        ("certfile", cfg.cert_file),
        ("keyfile", cfg.key_file),
        ("server_hostname", cfg.tls_server_name),
    ):
        if value:
            tls[key] = value
    return tls


def open_session(api: k8s.client.ApiClient, namespace: str, pod: str) -> Session:
    """A SPDY session to `pod`, its reader thread running; TunnelUnsupportedError on older servers."""
    try:
        ws = _connect(api, namespace, pod, SPDY_TUNNEL)
    except WebSocketBadStatusException as exc:
        if exc.status_code != 400:  # 403 (RBAC) or 404 (pod gone) are not about the protocol
            raise
        raise TunnelUnsupportedError(f"{exc.status_code}: {exc.resp_body!r}") from exc
    if (ws.getheaders() or {}).get("sec-websocket-protocol") != SPDY_TUNNEL:
        ws.close()
        raise TunnelUnsupportedError("the server did not accept the SPDY tunnel subprotocol")
    session: Session
    pipe = WebsocketPipe(ws, on_idle=lambda: session.ping())
    session = Session(pipe.send, pipe.receive, f"{namespace}/{pod}")
    session.on_close = pipe.close
    threading.Thread(target=session.run, name=f"spdy-{pod}", daemon=True).start()
    return session


class SpdyTunnel:
    """One local connection carried by a stream pair (error, data) on a pod's session.

    Bytes from the pod arrive on the session's one reader thread, which every connection on the
    session shares, so delivering them must not block it for long. They go straight to the
    client when its socket takes them; what it does not take waits in `_pending`, written out
    by a thread of this connection's own. The server ignores SPDY flow control, so the only way
    to slow a pod down is to stop reading its whole session (the API server, the kubelet and
    finally the pod's server then wait, as TCP makes them). Past CLIENT_BUFFER waiting bytes
    the reader does that, for this one client, for as long as the client keeps taking bytes;
    a client that takes none for CLIENT_STALL_SECONDS is stuck (or is waiting for something
    that the held-up session would bring: a deadlock), so its connection is reset, logged,
    and the session goes on. Memory per connection is thus at most CLIENT_BUFFER plus one
    frame, and no other stream waits more than CLIENT_STALL_SECONDS for a stuck one.
    """

    def __init__(
        self, local: socket.socket, session: Session, port: int, request_id: int, pod: str, hold: float = 0.0
    ) -> None:
        self.local = local
        self.pod = pod
        self.port = port
        #: Seconds the client's first bytes wait for a refusal (a pod that is not Ready).
        self.hold = hold
        self._error = bytearray()
        self._remote_done = threading.Event()
        self._closed = threading.Event()
        self._room = threading.Condition()  # guards _pending, buffered and _writer
        self._pending: collections.deque[bytes] = collections.deque()
        #: Bytes received for the client that it has not taken yet (pending or being written).
        self.buffered = 0
        self._writer: threading.Thread | None = None
        self.link: Link | None = None  # set when a toxic applies to this connection
        #: Guards `_sent` and `_refused`: a byte goes out only while the pod has not refused.
        self._verdict = threading.Lock()
        self._sent = False
        self._refused = False
        #: The pod has sent bytes: the connection was made, and the kubelet's side reads this one.
        self._answered = False
        self._error_over = False  # the error stream has ended (said something or not)
        self._server_finished = False  # the pod's side has ended the data stream
        #: What waits for the verdict, at most REFUSAL_GRACE_SECONDS: run at once when it comes.
        self._waiting: list[threading.Timer] = []
        base = {"port": str(port), "requestid": str(request_id)}
        self.error_stream, self.data = session.open(
            [base | {"streamtype": "error"}, base | {"streamtype": "data"}],
            [(self._error_data, self._error_end), (self._deliver, self._data_end)],
            fin=[True, False],  # nothing is ever written to the error stream
        )

    # remote -> local, on the session's reader thread: never block it for long on a slow client
    def _deliver(self, payload: bytes) -> None:
        self._answered = True
        if self.link is not None:
            self.link.downstream.push(payload)
        else:
            self.to_client(payload)

    def to_client(self, payload: bytes) -> None:
        with self._room:
            if self._closed.is_set():
                return
            if self._writer is None:  # nothing queued or in flight: order allows a direct send
                try:
                    sent = self.local.send(payload, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self._remote_done.set()
                    return
                if sent == len(payload):
                    return
                payload = payload[sent:]
            self._pending.append(payload)
            self.buffered += len(payload)
            self.data.session.behind.add(self.data.id)
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_pending, name=f"deliver-{self.pod}", daemon=True
                )
                self._writer.start()
            if self._wait_for_room():
                return
            held = self.buffered
        log.warning(
            "port-forward to %s port %d: the client took nothing for %gs while %d bytes waited for it; "
            "resetting its connection so the other connections to the pod go on",
            self.pod,
            self.port,
            CLIENT_STALL_SECONDS,
            held,
        )
        self.close()

    def _wait_for_room(self) -> bool:
        """Hold the reader (under `_room`) while the client is over CLIENT_BUFFER and taking bytes;
        False if it took none for CLIENT_STALL_SECONDS."""
        last = self.buffered
        deadline = time.monotonic() + CLIENT_STALL_SECONDS
        session = self.data.session
        try:
            while self.buffered > CLIENT_BUFFER and not (self._closed.is_set() or self._remote_done.is_set()):
                session.held = True  # new connections go to another session meanwhile
                if self.buffered < last:  # the client took something: it is slow, not stuck
                    last, deadline = self.buffered, time.monotonic() + CLIENT_STALL_SECONDS
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._room.wait(left)
            return True
        finally:
            session.held = False

    def _write_pending(self) -> None:
        """Only for a client that reads slower than its server writes."""
        while True:
            with self._room:
                if not self._pending or self._closed.is_set():
                    self._writer = None
                    self.data.session.behind.discard(self.data.id)
                    self._room.notify_all()
                    break
                chunk = self._pending.popleft()  # still counted in `buffered` until it is taken
            try:
                with memoryview(chunk) as view:
                    for start in range(0, len(view), _PIECE):
                        piece = view[start : start + _PIECE]
                        self.local.sendall(piece)
                        with self._room:
                            self.buffered = max(0, self.buffered - len(piece))
                            self._room.notify_all()
            except OSError:  # the client is gone: nothing more can reach it
                with self._room:
                    self._pending.clear()
                    self.buffered = 0
                    self._writer = None
                    self.data.session.behind.discard(self.data.id)
                    self._remote_done.set()
                    self._room.notify_all()
                break
        if self._remote_done.is_set():
            self._shut_local()

    def _error_data(self, payload: bytes) -> None:
        self._error += payload[: max(0, MAX_ERROR - len(self._error))]

    def _error_end(self, reason: str) -> None:
        with self._verdict:
            self._error_over = True
            refused = bool(self._error)
            self._refused = refused
            stranded = refused and self._sent and not self._answered
            finished = self._server_finished
        message = self._error.decode(errors="replace")
        if stranded:
            # The pod side never connected (nothing came back; an error after an answer ends a
            # connection that was made, whose bytes were read), so nothing there reads what this
            # stream carried, and the kubelet's SPDY server (moby/spdystream) hands a stream's
            # data to its reader from one of five frame workers chosen by stream id: that worker
            # now waits for good, and every later stream it serves with it. Five such refusals
            # and the session answers nothing at all. Only a new session is safe: this one is
            # closed (its other connections end, as they would with their server gone), before
            # this client sees its end, so its next connection opens another.
            log.info(
                "port-forward to %s failed after its client sent bytes (%s): closing its session",
                self.pod,
                message,
            )
            self.data.session.close(f"a refused connection's bytes block it on the server ({message})")
        elif refused:
            log.info("port-forward to %s failed: %s", self.pod, message)
        with self._verdict:
            waiting, self._waiting = self._waiting, []
        for timer in waiting:
            timer.cancel()  # the verdict is in: no thread sleeps out the grace for nothing
        if refused:
            self._data_end("error")
        elif finished:
            self.server_ended()  # the end `_data_end` held back for this verdict
        for timer in waiting:
            timer.function()  # each is safe to run twice, should its timer have fired just now

    def _upload(self, chunk: bytes) -> None:
        """Send the client's bytes to the pod, unless the pod refused the connection (an error) or
        closed its side (nothing there reads them any more)."""
        with self._verdict:
            if self._refused:
                raise SessionClosedError(f"{self.pod} refused the connection")
            if self._server_finished:
                return
            self._sent = True
        self.data.send(chunk)

    def _data_end(self, reason: str) -> None:
        if self.link is not None:
            self.link.downstream.end()
            return
        with self._verdict:
            self._server_finished = True
        if self._verdict_due():
            # A refusal ends the data stream first and says why on the error stream just after:
            # the client sees its end once that verdict is in (at most REFUSAL_GRACE_SECONDS
            # later), so that its next connection never lands on a session about to be closed.
            self._after_grace(self.server_ended)
            return
        self.server_ended()

    def _after_grace(self, call: Callable[[], object]) -> None:
        """`call()` when the error stream's verdict comes, or REFUSAL_GRACE_SECONDS from now on a
        daemon timer thread, whichever is first."""
        timer = threading.Timer(REFUSAL_GRACE_SECONDS, call)
        timer.daemon = True
        with self._verdict:
            came = self._error_over  # in the meantime
            if not came:
                self._waiting.append(timer)
        if came:
            call()
        else:
            timer.start()

    def _verdict_due(self) -> bool:
        """The client sent bytes, got none back, and the error stream has not said yet whether
        the pod refused them."""
        with self._verdict:
            return self._sent and not self._answered and not self._error_over

    def server_ended(self) -> None:
        if self._closed.is_set():
            return  # closing already (a toxic's reset among them): `close` deals with the socket
        self._remote_done.set()
        with self._room:
            flushing = self._writer is not None
            self._room.notify_all()  # a reader waiting for room stops waiting
        if not flushing:
            self._shut_local()

    def _shut_local(self) -> None:
        with contextlib.suppress(OSError):
            self.local.shutdown(socket.SHUT_RDWR)

    # local -> remote, on the connection's own thread
    def run(self) -> None:
        try:
            if self.hold:
                self._remote_done.wait(self.hold)  # a refusal ends the connection with nothing sent
            while not self._remote_done.is_set():
                chunk = self.local.recv(_CHUNK)
                if self.link is not None:
                    if chunk:
                        self.link.upstream.push(chunk)
                        continue
                    self.link.upstream.end().wait()
                if not chunk:
                    if not self._remote_done.is_set():
                        # The client is done sending: give the server a moment to answer a
                        # half-closed connection. (kwok never ends the stream itself.)
                        self.data.finish()
                        self._remote_done.wait(LINGER_SECONDS)
                    break
                self._upload(chunk)
        except (OSError, SessionClosedError):
            pass
        finally:
            self.close()

    def to_server(self, chunk: bytes) -> None:
        self._upload(chunk)

    def close(self, reset: bool = False) -> None:
        """End the connection; `reset`: with a TCP reset (a toxic's), not a FIN."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._remote_done.set()
        if self.link is not None:
            self.link.close()
        with self._room:
            self._pending.clear()
            self.buffered = 0
            self.data.session.behind.discard(self.data.id)
            self._room.notify_all()
        # The client sees the end first: the resets below may wait for the session's writer.
        if reset:
            reset_socket(self.local)
        else:
            self._shut_local()
        self.data.reset()
        if self._verdict_due():
            # A refusal ends the data stream first and says why on the error stream just after:
            # keep that stream a moment, so `_error_end` still learns the bytes were stranded.
            self._after_grace(self.error_stream.reset)
        else:
            self.error_stream.reset()
        with contextlib.suppress(OSError):
            self.local.close()


class ChannelTunnel:
    """The fallback: one websocket (v4.channel.k8s.io) per local connection.

    Each connection has its own websocket and thread, so a slow client slows only its own
    server (its thread waits in `sendall`, and TCP pushes back). The websocket's reads and
    writes wait at most CHANNEL_TIMEOUT; `close` from another thread never waits on the
    websocket's send lock (the connection's thread may hold it, stuck on an API server that
    reads nothing): it shuts the socket down, and the connection's thread finishes.
    """

    def __init__(
        self, local: socket.socket, api: k8s.client.ApiClient, namespace: str, pod: str, port: int
    ) -> None:
        self.local = local
        self.pod = pod
        self.ws = _connect(api, namespace, pod, CHANNELS, f"?ports={port}")
        self.ws.settimeout(10)
        # The server opens with one frame per channel naming the port: data (0) then error (1).
        for _ in range(2):
            opcode, frame = self.ws.recv_data_frame(True)
            if opcode != ABNF.OPCODE_BINARY or len(frame.data) != 3:
                self.ws.close()
                preamble = frame.data
                raise ConnectionError(
                    f"unexpected port-forward preamble from {namespace}/{pod}: {preamble!r}"
                )
        self.ws.settimeout(CHANNEL_TIMEOUT)
        self._closed = threading.Event()
        self._runner: threading.Thread | None = None
        self.link: Link | None = None  # set when a toxic applies to this connection

    def to_server(self, data: bytes) -> None:
        self.ws.send_binary(bytes([_DATA]) + data)

    def to_client(self, data: bytes) -> None:
        self.local.sendall(data)

    def server_ended(self) -> None:
        """Nothing to do: the connection's thread waits for the end to go through, then closes."""

    def close(self, reset: bool = False) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self.link is not None:
            self.link.close()
        if reset:
            reset_socket(self.local)
        else:
            with contextlib.suppress(OSError):
                self.local.shutdown(socket.SHUT_RDWR)
        if self._runner in (None, threading.current_thread()):
            # Nothing else uses the websocket: a brief goodbye (the close frame, the server's).
            with contextlib.suppress(OSError, WebSocketException):
                self.ws.settimeout(CHANNEL_CLOSE_SECONDS)
                self.ws.close(timeout=CHANNEL_CLOSE_SECONDS)
            self._free()
        else:
            # The connection's thread may be in a send or a read: cut the socket under it (the
            # raw shutdown, which leaves the TLS state alone); that thread ends, and frees it.
            sock = self.ws.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.local.close()

    def _free(self) -> None:
        """Close the websocket's socket (what websocket-client's untyped `shutdown` does)."""
        sock = self.ws.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _from_server(self) -> bool:
        """Handle everything buffered on the websocket; False when the stream has ended."""
        while True:
            opcode, frame = self.ws.recv_data_frame(True)
            if opcode == ABNF.OPCODE_CLOSE:
                if self.link is not None:
                    self.link.downstream.end().wait()
                return False
            if opcode == ABNF.OPCODE_BINARY and frame.data:
                channel, payload = frame.data[0], frame.data[1:]
                if channel == _DATA and payload:
                    if self.link is not None:
                        self.link.downstream.push(payload)
                    else:
                        self.local.sendall(payload)
                elif channel == _ERROR and payload:
                    log.info("port-forward to %s failed: %s", self.pod, payload.decode(errors="replace"))
                    return False
            sock = self.ws.sock
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                return True

    def run(self) -> None:
        self._runner = threading.current_thread()
        remote = self.ws.sock
        try:
            while remote is not None and not self._closed.is_set():
                readable, _, _ = select.select([self.local, remote], [], [], 0.5)
                if remote in readable and not self._from_server():
                    break
                if self.local in readable:
                    data = self.local.recv(_CHUNK)
                    if self.link is not None:
                        if data:
                            self.link.upstream.push(data)
                            continue
                        self.link.upstream.end().wait()
                    if not data:
                        break
                    self.ws.send_binary(bytes([_DATA]) + data)
        except (OSError, WebSocketException, ValueError):
            pass
        finally:
            self.close()
            self._free()  # when another thread closed it, the socket is still ours to free


Tunnel = SpdyTunnel | ChannelTunnel


class Forwarder:
    """Every forward of one worker namespace: one pod watch, and SPDY sessions to each ready pod."""

    def __init__(self, api: k8s.client.ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.channels_only = False  # set once the server turned the SPDY tunnel down
        self.closed = False
        self.tunnels: set[Tunnel] = set()
        self._sessions: dict[str, list[Session]] = {}
        self._opening: dict[str, threading.Lock] = {}
        self._underway: dict[str, int] = {}  # sessions being opened ahead, per pod
        self._lock = threading.Lock()
        self._request_ids = itertools.count()
        self._listeners: list[ServiceForward] = []
        self.pods = PodWatch(api, namespace, on_change=self._pods_changed)

    def listen(self, service: str, port: int, local_port: int) -> ServiceForward:
        listener = ServiceForward(self, service, port, local_port)
        self._listeners.append(listener)
        return listener

    def listeners(self, service: str) -> list[ServiceForward]:
        """The listeners of `service` (one per forwarded port)."""
        return [listener for listener in self._listeners if listener.service == service]

    # -- sessions ---------------------------------------------------------------------------

    def session(self, pod: str) -> Session:
        """The pod's least busy open session; one is opened now only if there is none.

        Concurrent connections spread over up to MAX_SESSIONS sessions (each its own TCP
        connection and reader thread): another is opened in the background as soon as every
        open one carries a connection, so no new connection waits for a handshake. The one
        exception: when every open session's reader waits for a slow client, or may soon (a
        client is behind), a new connection waits for a new session's handshake rather than for
        that client (up to CLIENT_STALL_SECONDS).
        """
        with self._lock:
            live = self._live(pod)
            # A session whose reader waits for a slow client delays every stream on it: last
            # choice; one carrying a client that is behind may soon do so: next to last.
            best = min(live, key=lambda s: (s.held, bool(s.behind), s.open_streams, s.streams), default=None)
        if best is None:
            return self._open(pod, only_if_none=True)
        if (best.held or best.behind) and len(live) < MAX_SESSIONS:
            try:
                return self._open(pod, only_if_none=False)
            except Exception as exc:  # the busy session still serves
                log.debug("could not open another session to %s/%s: %s", self.namespace, pod, exc)
        if best.streams or best.held:
            self._grow(pod, min(len(live) + 1, MAX_SESSIONS))
        return best

    def open_sessions(self, pod: str) -> int:
        with self._lock:
            return len(self._live(pod))

    def _live(self, pod: str) -> list[Session]:
        live = [s for s in self._sessions.get(pod, []) if not s.closed.is_set()]
        self._sessions[pod] = live
        return live

    def _open(self, pod: str, only_if_none: bool) -> Session:
        with self._lock:
            opening = self._opening.setdefault(pod, threading.Lock())
        with opening:  # one handshake per pod at a time
            with self._lock:
                live = self._live(pod)
            if live and only_if_none:
                return live[0]
            began = time.monotonic()
            session = open_session(self.api, self.namespace, pod)
            log.debug("session to %s/%s opened in %.2fs", self.namespace, pod, time.monotonic() - began)
            with self._lock:
                if not self.closed:
                    self._sessions.setdefault(pod, []).append(session)
                    return session
            session.close("the forwarder closed while this session was being opened")
            raise SessionClosedError(f"{self.namespace}/{pod}: the forwarder is closed")

    def _grow(self, pod: str, target: int) -> None:
        """Open sessions in the background until the pod has `target`, counting those on the way."""
        with self._lock:
            missing = target - len(self._live(pod)) - self._underway.get(pod, 0)
            if missing <= 0 or self.channels_only or self.closed:
                return
            self._underway[pod] = self._underway.get(pod, 0) + missing
        for _ in range(missing):
            threading.Thread(target=self._open_ahead, args=(pod,), name=f"warm-{pod}", daemon=True).start()

    def _open_ahead(self, pod: str) -> None:
        try:
            self._open(pod, only_if_none=False)
        except TunnelUnsupportedError:
            self.channels_only = True
        except Exception as exc:  # the next connection will try again and report it
            log.debug("could not pre-open a session to %s/%s: %s", self.namespace, pod, exc)
        finally:
            with self._lock:
                self._underway[pod] -= 1

    def _pods_changed(self, ready: set[str], started: set[str]) -> None:
        self.drop_pods(lambda pod: pod not in ready and pod not in started)
        for pod in ready:
            self._grow(pod, WARM_SESSIONS)

    def drop_pods(self, which: Callable[[str], bool]) -> int:
        """Close every connection (and session) to the pods `which(pod)` selects."""
        with self._lock:
            sessions = [s for pod in list(self._sessions) if which(pod) for s in self._sessions.pop(pod)]
            tunnels = [t for t in self.tunnels if which(t.pod)]
        # Sessions first: closing one ends its streams and aborts a write the API server is not
        # reading, so the tunnels' resets after it have nothing to wait for.
        for session in sessions:
            session.close("the pod is no longer running")
        for tunnel in tunnels:
            tunnel.close()
        return len(tunnels)

    # -- connections ------------------------------------------------------------------------

    def serve(
        self, local: socket.socket, service: str, port: int, listener: ServiceForward | None = None
    ) -> None:
        """Carry one accepted local connection to `port` of the service's newest ready pod (with
        the toxics of the `listener` that accepted it)."""
        local.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pods = self.pods.ready(service)
        ready = bool(pods)
        if not ready:
            pods = self.pods.started(service, timeout=0)
        if not pods:
            log.info("no running pod for %s/%s; dropping the connection", self.namespace, service)
            local.close()
            return
        try:
            tunnel = self._tunnel(local, pods[0], port, hold=0.0 if ready else UNREADY_HOLD_SECONDS)
        except (OSError, WebSocketException, ConnectionError) as exc:
            log.info("port-forward to %s/%s failed: %s", self.namespace, pods[0], exc)
            local.close()
            return
        with self._lock:
            self.tunnels.add(tunnel)
        if listener is not None:
            listener.toxics.attach(tunnel)
        try:
            tunnel.run()
        finally:
            with self._lock:
                self.tunnels.discard(tunnel)
            if listener is not None:
                listener.toxics.detach(tunnel)

    def _tunnel(self, local: socket.socket, pod: str, port: int, hold: float) -> Tunnel:
        if not self.channels_only:
            try:
                return SpdyTunnel(local, self.session(pod), port, next(self._request_ids), pod, hold)
            except TunnelUnsupportedError as exc:
                log.info("%s: no SPDY tunnel (%s); using one websocket per connection", self.namespace, exc)
                self.channels_only = True
            except SessionClosedError:  # the session died between lookup and use: one retry
                return SpdyTunnel(local, self.session(pod), port, next(self._request_ids), pod, hold)
        return ChannelTunnel(local, self.api, self.namespace, pod, port)

    def close(self) -> None:
        with self._lock:
            self.closed = True
        for listener in self._listeners:
            listener.close()
        self.pods.close()
        self.drop_pods(lambda _pod: True)


class ServiceForward:
    """A listener on 127.0.0.1:<local_port> forwarding to `port` of the service's ready pods."""

    def __init__(self, forwarder: Forwarder, service: str, port: int, local_port: int) -> None:
        self.forwarder = forwarder
        self.service = service
        self.port = port
        self.local_port = local_port
        #: The faults in force on this listener's connections (toxics.py).
        self.toxics = Toxics()
        self.down = False
        self._start()

    def _start(self) -> None:
        self._stop = threading.Event()
        self.server = socket.create_server(("127.0.0.1", self.local_port), reuse_port=False, backlog=128)
        self.server.settimeout(0.5)
        self._thread = threading.Thread(target=self._accept, name=f"forward-{self.service}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                local, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(
                target=self.forwarder.serve, args=(local, self.service, self.port, self), daemon=True
            ).start()

    def take_down(self) -> int:
        """The `down` fault: stop listening (a new connection is refused, as by a stopped server)
        and cut the open connections; how many were cut."""
        self.down = True
        self.close()
        return self.toxics.cut()

    def bring_up(self) -> None:
        """Listen on the same port again after `take_down` (PortBusyError if it was taken meanwhile)."""
        if not self.down:
            return
        try:
            self._start()
        except OSError as exc:
            raise PortBusyError(
                f"{self.service} went down as a fault and cannot come back: its local port "
                f"{self.local_port} was taken meanwhile ({exc.strerror}); the program that listens there "
                f"now (`ss -ltnp 'sport = :{self.local_port}'` names it) must let it go"
            ) from exc
        self.toxics.resume()
        self.down = False

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            # Closing alone does not wake an accept() blocked in another thread (Linux): the
            # thread would wait for its 0.5 s timeout, and a worker's exit for every listener's.
            self.server.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.server.close()
        self._thread.join(timeout=2)
