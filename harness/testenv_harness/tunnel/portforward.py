"""Local TCP listeners that forward through the API server's pod port-forward, like kubectl.

`Forwarder` serves one worker namespace. It keeps one pod watch (`PodWatch`) and, per ready
pod, one SPDY session tunnelled through a websocket, opened as soon as the pod is ready. A
new local connection opens a stream pair on that session: no LIST, no TLS handshake, no wait
for a reply before the first bytes go out. When a pod stops being ready its session is closed,
so clients see their server go away and reconnect to the new pod, exactly as they would to a
restarted server; a server closing a connection is seen by the client too (the stream ends).

API servers without the SPDY tunnel (before Kubernetes 1.31, or with the PortForwardWebsockets
gate off) get the websocket channel protocol instead: one websocket per connection.
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
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.stream.ws_client import create_websocket
from websocket import ABNF, WebSocket, WebSocketBadStatusException, WebSocketException

from testenv_harness.tunnel.podwatch import PodWatch
from testenv_harness.tunnel.spdy import Session, SessionClosedError
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


class TunnelUnsupportedError(ConnectionError):
    """The API server does not tunnel SPDY through websockets."""


def stream_headers(api: client.ApiClient, path: str, protocol: str) -> dict[str, Any]:
    """The port-forward request's headers, authenticated the way the client authenticates any call.

    The client's own auth path runs the kubeconfig's credential refresh (exec plugins such as
    EKS's and GKE's, expiring tokens) before it reads the token; client certificates and
    proxies are applied by `create_websocket` from the same configuration.
    """
    headers: dict[str, Any] = {"sec-websocket-protocol": protocol}
    api.update_params_for_auth(headers, [], ["BearerToken"], path, "GET", None)
    return headers


def _connect(api: client.ApiClient, namespace: str, pod: str, protocol: str, query: str = "") -> WebSocket:
    cfg = api.configuration
    host = cfg.host.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    path = f"/api/v1/namespaces/{namespace}/pods/{pod}/portforward"
    ws: WebSocket = create_websocket(cfg, f"{host}{path}{query}", stream_headers(api, path, protocol))
    return ws


def open_session(api: client.ApiClient, namespace: str, pod: str) -> Session:
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
    """One local connection carried by a stream pair (error, data) on a pod's session."""

    def __init__(self, local: socket.socket, session: Session, port: int, request_id: int, pod: str) -> None:
        self.local = local
        self.pod = pod
        self._error = bytearray()
        self._remote_done = threading.Event()
        self._closed = threading.Event()
        self._out_lock = threading.Lock()
        self._pending: collections.deque[bytes] = collections.deque()
        self._writer: threading.Thread | None = None
        base = {"port": str(port), "requestid": str(request_id)}
        self.error_stream, self.data = session.open(
            [base | {"streamtype": "error"}, base | {"streamtype": "data"}],
            [(self._error.extend, self._error_end), (self._deliver, self._data_end)],
            fin=[True, False],  # nothing is ever written to the error stream
        )

    # remote -> local, on the session's reader thread: never block it on a slow client
    def _deliver(self, payload: bytes) -> None:
        with self._out_lock:
            if not self._pending:
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
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_pending, daemon=True)
                self._writer.start()

    def _write_pending(self) -> None:
        """Only for a client that reads slower than its server writes."""
        while True:
            with self._out_lock:
                if not self._pending:
                    self._writer = None
                    break
                chunk = self._pending.popleft()
            try:
                self.local.sendall(chunk)
            except OSError:
                break
        if self._remote_done.is_set():
            self._shut_local()

    def _error_end(self, reason: str) -> None:
        if self._error:
            log.info("port-forward to %s failed: %s", self.pod, self._error.decode(errors="replace"))
            self._data_end("error")

    def _data_end(self, reason: str) -> None:
        self._remote_done.set()
        with self._out_lock:
            flushing = self._writer is not None
        if not flushing:
            self._shut_local()

    def _shut_local(self) -> None:
        with contextlib.suppress(OSError):
            self.local.shutdown(socket.SHUT_RDWR)

    # local -> remote, on the connection's own thread
    def run(self) -> None:
        try:
            while not self._remote_done.is_set():
                chunk = self.local.recv(_CHUNK)
                if not chunk:
                    if not self._remote_done.is_set():
                        # The client is done sending: give the server a moment to answer a
                        # half-closed connection. (kwok never ends the stream itself.)
                        self.data.finish()
                        self._remote_done.wait(LINGER_SECONDS)
                    break
                self.data.send(chunk)
        except (OSError, SessionClosedError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self.data.reset()
        self.error_stream.reset()
        self._remote_done.set()
        self._shut_local()
        with contextlib.suppress(OSError):
            self.local.close()


class ChannelTunnel:
    """The fallback: one websocket (v4.channel.k8s.io) per local connection."""

    def __init__(
        self, local: socket.socket, api: client.ApiClient, namespace: str, pod: str, port: int
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
        self.ws.settimeout(None)
        self._closed = threading.Event()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError, WebSocketException):
            self.ws.close(timeout=0.5)
        with contextlib.suppress(OSError):
            self.local.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.local.close()

    def _from_server(self) -> bool:
        """Handle everything buffered on the websocket; False when the stream has ended."""
        while True:
            opcode, frame = self.ws.recv_data_frame(True)
            if opcode == ABNF.OPCODE_CLOSE:
                return False
            if opcode == ABNF.OPCODE_BINARY and frame.data:
                channel, payload = frame.data[0], frame.data[1:]
                if channel == _DATA and payload:
                    self.local.sendall(payload)
                elif channel == _ERROR and payload:
                    log.info("port-forward to %s failed: %s", self.pod, payload.decode(errors="replace"))
                    return False
            sock = self.ws.sock
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                return True

    def run(self) -> None:
        remote = self.ws.sock
        try:
            while remote is not None and not self._closed.is_set():
                readable, _, _ = select.select([self.local, remote], [], [], 0.5)
                if remote in readable and not self._from_server():
                    break
                if self.local in readable:
                    data = self.local.recv(_CHUNK)
                    if not data:
                        break
                    self.ws.send_binary(bytes([_DATA]) + data)
        except (OSError, WebSocketException, ValueError):
            pass
        finally:
            self.close()


Tunnel = SpdyTunnel | ChannelTunnel


class Forwarder:
    """Every forward of one worker namespace: one pod watch, and SPDY sessions to each ready pod."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
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

    # -- sessions ---------------------------------------------------------------------------

    def session(self, pod: str) -> Session:
        """The pod's least busy open session; one is opened now only if there is none.

        Concurrent connections spread over up to MAX_SESSIONS sessions (each its own TCP
        connection and reader thread): another is opened in the background as soon as every
        open one carries a connection, so no new connection waits for a handshake.
        """
        with self._lock:
            live = self._live(pod)
            best = min(live, key=lambda s: s.streams, default=None)
        if best is None:
            return self._open(pod, only_if_none=True)
        if best.streams:
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
            session = open_session(self.api, self.namespace, pod)
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

    def _pods_changed(self, ready: set[str]) -> None:
        self.drop_pods(lambda pod: pod not in ready)
        for pod in ready:
            self._grow(pod, WARM_SESSIONS)

    def drop_pods(self, which: Callable[[str], bool]) -> int:
        """Close every connection (and session) to the pods `which(pod)` selects."""
        with self._lock:
            sessions = [s for pod in list(self._sessions) if which(pod) for s in self._sessions.pop(pod)]
            tunnels = [t for t in self.tunnels if which(t.pod)]
        for tunnel in tunnels:
            tunnel.close()
        for session in sessions:
            session.close("the pod is no longer ready")
        return len(tunnels)

    # -- connections ------------------------------------------------------------------------

    def serve(self, local: socket.socket, service: str, port: int) -> None:
        """Carry one accepted local connection to `port` of the service's newest ready pod."""
        local.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pods = self.pods.ready(service)
        if not pods:
            log.info("no ready pod for %s/%s; dropping the connection", self.namespace, service)
            local.close()
            return
        try:
            tunnel = self._tunnel(local, pods[0], port)
        except (OSError, WebSocketException, ConnectionError) as exc:
            log.info("port-forward to %s/%s failed: %s", self.namespace, pods[0], exc)
            local.close()
            return
        with self._lock:
            self.tunnels.add(tunnel)
        try:
            tunnel.run()
        finally:
            with self._lock:
                self.tunnels.discard(tunnel)

    def _tunnel(self, local: socket.socket, pod: str, port: int) -> Tunnel:
        if not self.channels_only:
            try:
                return SpdyTunnel(local, self.session(pod), port, next(self._request_ids), pod)
            except TunnelUnsupportedError as exc:
                log.info("%s: no SPDY tunnel (%s); using one websocket per connection", self.namespace, exc)
                self.channels_only = True
            except SessionClosedError:  # the session died between lookup and use: one retry
                return SpdyTunnel(local, self.session(pod), port, next(self._request_ids), pod)
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
        self._stop = threading.Event()
        self.server = socket.create_server(("127.0.0.1", local_port), reuse_port=False, backlog=128)
        self.server.settimeout(0.5)
        self._thread = threading.Thread(target=self._accept, name=f"forward-{service}", daemon=True)
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
                target=self.forwarder.serve, args=(local, self.service, self.port), daemon=True
            ).start()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.server.close()
        self._thread.join(timeout=2)
