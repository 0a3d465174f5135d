"""Local TCP listeners that forward through the API server's pod port-forward stream.

One listener per service, bound on the port the operator planned. Each accepted connection
picks a ready pod of the service at that moment and opens its own websocket stream to
`pods/<pod>/portforward`, so a pod that was restarted is picked up by the next connection.
The websocket protocol (v4.channel.k8s.io) has no signal for the far end closing, so
connections to a pod are closed when that pod stops being ready or goes away: clients then see
a dropped connection and reconnect, exactly as they would to a restarted server.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.stream.ws_client import create_websocket
from websocket import ABNF, WebSocket, WebSocketException

from testenv_api import LABEL_SERVICE

log = logging.getLogger(__name__)
_DATA, _ERROR = 0, 1


def ready_pods(core: client.CoreV1Api, namespace: str, service: str) -> list[str]:
    """Names of the service's pods that are Ready and not being deleted, newest first."""
    pods = core.list_namespaced_pod(namespace, label_selector=f"{LABEL_SERVICE}={service}").items
    ready = [
        p
        for p in pods
        if p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
    ]
    ready.sort(key=lambda p: p.metadata.creation_timestamp, reverse=True)
    return [p.metadata.name for p in ready]


def stream_headers(api: client.ApiClient, path: str) -> dict[str, Any]:
    """The port-forward request's headers, authenticated the way the client authenticates any call.

    The client's own auth path runs the kubeconfig's credential refresh (exec plugins such as
    EKS's and GKE's, expiring tokens) before it reads the token; client certificates and
    proxies are applied by `create_websocket` from the same configuration.
    """
    headers: dict[str, Any] = {"sec-websocket-protocol": "v4.channel.k8s.io"}
    api.update_params_for_auth(headers, [], ["BearerToken"], path, "GET", None)
    return headers


def open_stream(api: client.ApiClient, namespace: str, pod: str, port: int, timeout: float = 10) -> WebSocket:
    """A websocket carrying one TCP connection to `port` of `pod`, through the API server."""
    cfg = api.configuration
    host = cfg.host.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    path = f"/api/v1/namespaces/{namespace}/pods/{pod}/portforward"
    ws: WebSocket = create_websocket(cfg, f"{host}{path}?ports={port}", stream_headers(api, path))
    ws.settimeout(timeout)
    # The server opens with one frame per channel naming the port: data (0) then error (1).
    for _ in range(2):
        opcode, frame = ws.recv_data_frame(True)
        if opcode != ABNF.OPCODE_BINARY or len(frame.data) != 3:
            ws.close()
            raise ConnectionError(f"unexpected port-forward preamble from {namespace}/{pod}: {frame.data!r}")
    ws.settimeout(None)
    return ws


class Tunnel:
    """Pumps bytes between one local client socket and one port-forward websocket."""

    def __init__(self, local: socket.socket, ws: WebSocket, pod: str) -> None:
        self.local = local
        self.ws = ws
        self.pod = pod
        self.closed = threading.Event()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
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
                    log.debug("port-forward to %s failed: %s", self.pod, payload.decode(errors="replace"))
                    return False
            sock = self.ws.sock
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                return True

    def run(self) -> None:
        remote = self.ws.sock
        if remote is None:
            self.close()
            return
        try:
            while not self.closed.is_set():
                readable, _, _ = select.select([self.local, remote], [], [], 0.5)
                if remote in readable and not self._from_server():
                    break
                if self.local in readable:
                    data = self.local.recv(256 * 1024)
                    if not data:
                        break
                    self.ws.send_binary(bytes([_DATA]) + data)
        except (OSError, WebSocketException, ValueError):
            pass
        finally:
            self.close()


class ServiceForward:
    """A listener on 127.0.0.1:<local_port> forwarding to `port` of the service's ready pods."""

    def __init__(
        self, api: client.ApiClient, namespace: str, service: str, port: int, local_port: int
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.service = service
        self.port = port
        self.local_port = local_port
        self.tunnels: list[Tunnel] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.server = socket.create_server(("127.0.0.1", local_port), reuse_port=False, backlog=128)
        self.server.settimeout(0.5)
        self._threads = [
            threading.Thread(target=self._accept, name=f"forward-{service}", daemon=True),
            threading.Thread(target=self._reap, name=f"reap-{service}", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                local, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(local,), daemon=True).start()

    def _serve(self, local: socket.socket) -> None:
        local.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pods = ready_pods(self.core, self.namespace, self.service)
        if not pods:
            log.info("no ready pod for %s/%s; dropping the connection", self.namespace, self.service)
            local.close()
            return
        try:
            ws = open_stream(self.api, self.namespace, pods[0], self.port)
        except (OSError, WebSocketException, ConnectionError) as exc:
            log.info("port-forward to %s/%s failed: %s", self.namespace, pods[0], exc)
            local.close()
            return
        tunnel = Tunnel(local, ws, pods[0])
        with self._lock:
            self.tunnels.append(tunnel)
        try:
            tunnel.run()
        finally:
            with self._lock:
                self.tunnels.remove(tunnel)

    def _reap(self) -> None:
        """Close connections whose pod is no longer ready: the client sees its server go away."""
        while not self._stop.wait(0.5):
            with self._lock:
                pods = {t.pod for t in self.tunnels}
            if not pods:
                continue
            try:
                alive = set(ready_pods(self.core, self.namespace, self.service))
            except Exception:  # the API server being briefly unreachable must not kill the reaper
                continue
            self.drop(lambda tunnel, alive=alive: tunnel.pod not in alive)  # type: ignore[misc]

    def drop(self, which: Callable[[Tunnel], bool] = lambda _: True) -> int:
        with self._lock:
            doomed = [t for t in self.tunnels if which(t)]
        for tunnel in doomed:
            tunnel.close()
        return len(doomed)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.server.close()
        self.drop()
        for thread in self._threads:
            thread.join(timeout=2)
