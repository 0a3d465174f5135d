"""Kafka's Metadata request framed by hand: ask for a topic, auto-created, until it has a leader.

The class-data archive's training broker (kafka_cds) is taken as far as a test's first request
goes, and the harness depends on no Kafka client. Whether a broker answers at all is
probes.ping's ApiVersions.
"""

from __future__ import annotations

import socket
import struct

METADATA = 3
#: Metadata v4 is the first version with `allow_auto_topic_creation`; every 4.x broker serves it.
METADATA_VERSION = 4
CLIENT_ID = "kube-testenv"


def frame(api_key: int, version: int, correlation_id: int, body: bytes = b"") -> bytes:
    """A size-prefixed request with a v1 header (the non-flexible one every broker accepts)."""
    client = CLIENT_ID.encode()
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client)) + client
    return struct.pack(">i", len(header) + len(body)) + header + body


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def metadata_body(topics: list[str], auto_create: bool) -> bytes:
    body = struct.pack(">i", len(topics)) + b"".join(_string(t) for t in topics)
    return body + struct.pack(">?", auto_create)


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:  # a port mapping with nothing behind it accepts, then closes
            raise ConnectionError("the connection closed before a whole response arrived")
        data += chunk
    return data


def call(port: int, api_key: int, version: int, body: bytes = b"", *, timeout: float = 2.0) -> bytes:
    """Send one request to 127.0.0.1:`port`; the response after its correlation id."""
    correlation_id = 1
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(frame(api_key, version, correlation_id, body))
        (size,) = struct.unpack(">i", _exactly(sock, 4))
        response = _exactly(sock, size)
    (answered,) = struct.unpack_from(">i", response)
    if answered != correlation_id:
        raise ConnectionError(f"response to correlation id {answered}, expected {correlation_id}")
    return response[4:]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return int(value)

    def skip_string(self) -> None:
        size = self.take(">h")
        self.at += max(size, 0)  # -1 is a null string


def first_topic_error(response: bytes) -> int:
    """The first topic's error code in a Metadata v4 response (0 once it exists with a leader)."""
    reader = _Reader(response)
    reader.take(">i")  # throttle time
    for _ in range(reader.take(">i")):  # brokers: node id, host, port, rack
        reader.take(">i")
        reader.skip_string()
        reader.take(">i")
        reader.skip_string()
    reader.skip_string()  # cluster id
    reader.take(">i")  # controller id
    if reader.take(">i") < 1:
        raise ValueError("the Metadata response lists no topic")
    return reader.take(">h")


def topic_ready(port: int, topic: str, *, timeout: float = 2.0) -> bool:
    """Ask for `topic` with auto-creation on; whether it exists and has a leader now."""
    try:
        response = call(port, METADATA, METADATA_VERSION, metadata_body([topic], True), timeout=timeout)
    except OSError:
        return False
    return first_topic_error(response) == 0
