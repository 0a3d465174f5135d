"""Kafka requests framed by hand, as the harness depends on no Kafka client.

- Metadata for one topic, auto-created, until it has a leader: the class-data archive's training
  broker (kafka_cds) is taken as far as a test's first request goes.
- Every topic and every consumer group deleted (`reset`): what a reused environment's broker
  gets before the next run's first test, instead of a restart.

Whether a broker answers at all: `PING`, an ApiVersions request.
"""

from __future__ import annotations

import socket
import struct

from testenv_harness.ground.waiting import WaitTimeoutError, wait_for
from testenv_harness.services.base import Ping

METADATA = 3
LIST_GROUPS = 16
DELETE_TOPICS = 20
DELETE_GROUPS = 42
#: Error codes a reset may meet and pass over: gone already (a topic, a group).
UNKNOWN_TOPIC_OR_PARTITION = 3
GROUP_ID_NOT_FOUND = 69
#: Metadata v4 is the first version with `allow_auto_topic_creation`; every 4.x broker serves it.
METADATA_VERSION = 4
CLIENT_ID = "kube-testenv"
#: ApiVersions v0 (size, api_key 18, version 0, correlation id 7, null client id); the answer
#: echoes the correlation id after its 4-byte size.
PING = Ping(struct.pack(">ihhih", 10, 18, 0, 7, -1), lambda answer: answer[4:8] == struct.pack(">i", 7))


def frame(api_key: int, version: int, correlation_id: int, body: bytes = b"") -> bytes:
    """A size-prefixed request with a v1 header (the non-flexible one every broker accepts)."""
    client = CLIENT_ID.encode()
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client)) + client
    return struct.pack(">i", len(header) + len(body)) + header + body


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def _strings(values: list[str]) -> bytes:
    return struct.pack(">i", len(values)) + b"".join(_string(v) for v in values)


def metadata_body(topics: list[str] | None, auto_create: bool) -> bytes:
    """None asks for every topic (a null array)."""
    body = struct.pack(">i", -1) if topics is None else _strings(topics)
    return body + struct.pack(">?", auto_create)


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:  # a port mapping with nothing behind it accepts, then closes
            raise ConnectionError("the connection closed before a whole response arrived")
        data += chunk
    return data


def call(
    port: int, api_key: int, version: int, body: bytes = b"", *, timeout: float = 2.0, host: str = "127.0.0.1"
) -> bytes:
    """Send one request to `host`:`port`; the response after its correlation id."""
    correlation_id = 1
    with socket.create_connection((host, port), timeout=timeout) as sock:
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

    def string(self) -> str:
        size = self.take(">h")
        text = self.data[self.at : self.at + max(size, 0)].decode()
        self.at += max(size, 0)
        return text

    def skip_ints(self) -> None:
        count = self.take(">i")  # apart: `self.at += 4 * self.take(...)` would read `at` first
        self.at += 4 * count


def _past_brokers(response: bytes) -> _Reader:
    """A reader of a Metadata v4 response, at its topic count."""
    reader = _Reader(response)
    reader.take(">i")  # throttle time
    for _ in range(reader.take(">i")):  # brokers: node id, host, port, rack
        reader.take(">i")
        reader.skip_string()
        reader.take(">i")
        reader.skip_string()
    reader.skip_string()  # cluster id
    reader.take(">i")  # controller id
    return reader


def first_topic_error(response: bytes) -> int:
    """The first topic's error code in a Metadata v4 response (0 once it exists with a leader)."""
    reader = _past_brokers(response)
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


class ResetError(RuntimeError):
    """The broker refused to give up a topic or group (for example a group with live members)."""


def user_topics(port: int, *, timeout: float = 5.0, host: str = "127.0.0.1") -> list[str]:
    """Every topic of the broker but its internal ones (`__consumer_offsets`, ...)."""
    reader = _past_brokers(
        call(port, METADATA, METADATA_VERSION, metadata_body(None, False), timeout=timeout, host=host)
    )
    names = []
    for _ in range(reader.take(">i")):
        reader.take(">h")  # error code
        name = reader.string()
        internal = reader.take(">?")
        for _ in range(reader.take(">i")):  # partitions: error, index, leader, replicas, in-sync
            reader.take(">h")
            reader.take(">i")
            reader.take(">i")
            reader.skip_ints()
            reader.skip_ints()
        if not internal and not name.startswith("__"):
            names.append(name)
    return names


def _failures(reader: _Reader, passable: int) -> list[str]:
    """(name, error code) entries of a DeleteTopics v1 / DeleteGroups v0 answer that failed."""
    failed = []
    for _ in range(reader.take(">i")):
        name, error = reader.string(), reader.take(">h")
        if error not in (0, passable):
            failed.append(f"{name} (error {error})")
    return failed


def reset(port: int, *, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Delete every topic and consumer group of the broker on `host`:`port`; ResetError if it
    refuses any, OSError if it does not answer. Returns once the topics are gone from its metadata."""
    topics = user_topics(port, host=host)
    if topics:
        reader = _Reader(
            call(port, DELETE_TOPICS, 1, _strings(topics) + struct.pack(">i", int(timeout * 1000)), host=host)
        )
        reader.take(">i")  # throttle time
        if failed := _failures(reader, UNKNOWN_TOPIC_OR_PARTITION):
            raise ResetError(f"the broker kept topics {', '.join(failed)}")
    reader = _Reader(call(port, LIST_GROUPS, 1, host=host))
    reader.take(">i")  # throttle time
    if error := reader.take(">h"):
        raise ResetError(f"listing consumer groups failed (error {error})")
    groups = []
    for _ in range(reader.take(">i")):
        groups.append(reader.string())
        reader.skip_string()  # protocol type
    if groups:
        reader = _Reader(call(port, DELETE_GROUPS, 0, _strings(groups), host=host))
        reader.take(">i")  # throttle time
        if failed := _failures(reader, GROUP_ID_NOT_FOUND):
            raise ResetError(f"the broker kept consumer groups {', '.join(failed)}")
    try:
        wait_for(lambda: not user_topics(port, host=host), timeout=timeout, what="the topics", interval=0.05)
    except WaitTimeoutError:
        left = ", ".join(user_topics(port, host=host))
        raise ResetError(f"topics {left} were still listed {timeout:.0f}s after their deletion") from None
