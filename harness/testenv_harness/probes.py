"""Protocol-level pings through a local forward (or at a Service's DNS name, from inside the
cluster): is the service itself answering?

Pod readiness says the container is ready; on the `local` cluster kwok marks pods Ready
before the host process listens, and on any cluster a port-forward can outlive its pod. A
worker only starts once each of its services answers its own protocol.
"""

from __future__ import annotations

import socket
import struct
import time

from testenv_harness.waiting import wait_for

# One request per protocol, and what the first bytes of a healthy answer look like.
_REDIS = (b"*1\r\n$4\r\nPING\r\n", b"+PONG")
_HTTP = (b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", b"HTTP/")
# ApiVersions v0: size, api_key 18, version 0, correlation id 7, null client id.
_KAFKA = (struct.pack(">ihhih", 10, 18, 0, 7, -1), struct.pack(">i", 7))
_POSTGRES = (struct.pack(">ii", 8, 80877103), b"")  # SSLRequest: answered by 'N' or 'S'
_AMQP = (b"AMQP\x00\x00\x09\x01", b"\x01")  # protocol header: answered by a Connection.Start frame
_MQTT = (b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04ping", b"\x20\x02")  # CONNECT -> CONNACK

PINGS: dict[str, tuple[bytes, bytes]] = {
    "redis": _REDIS,
    "kafka": _KAFKA,
    "localstack": _HTTP,
    "moto": _HTTP,
    "postgres": _POSTGRES,
    "rabbitmq": _AMQP,
    "mosquitto": _MQTT,
}


def _expected(answer: bytes, service_type: str, want: bytes) -> bool:
    if service_type == "kafka":
        return len(answer) >= 8 and answer[4:8] == want  # after the 4-byte size
    if service_type == "postgres":
        return answer[:1] in (b"N", b"S")
    return answer.startswith(want)


def ping(service_type: str, port: int, timeout: float = 2.0, host: str = "127.0.0.1") -> bool:
    """One attempt: does the service on host:port answer its protocol?"""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if service_type not in PINGS:
                # Unknown protocol: a forward to nothing is closed at once; a live one stays open.
                sock.settimeout(0.5)
                try:
                    return sock.recv(1) != b""
                except TimeoutError:
                    return True
            request, want = PINGS[service_type]
            sock.sendall(request)
            answer = b""
            deadline = time.monotonic() + timeout
            while not _expected(answer, service_type, want) and time.monotonic() < deadline:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                answer += chunk
            return _expected(answer, service_type, want)
    except OSError:
        return False


def wait_answering(service_type: str, port: int, timeout: float, host: str = "127.0.0.1") -> float:
    """Seconds until the service answered; WaitTimeoutError (a TimeoutError) naming the port otherwise."""
    started = time.monotonic()
    wait_for(
        lambda: ping(service_type, port, host=host),
        timeout=timeout,
        what=f"{service_type} on {host}:{port} to answer its protocol",
        seen=lambda: "no answer, or not the protocol's",
    )
    return time.monotonic() - started
