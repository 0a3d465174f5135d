"""redis: redis-server from Debian on the local cluster; wiped with FLUSHALL."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from testenv_harness.ground.errors import TestEnvError
from testenv_harness.services.base import Launch, Ping, PodSpec, ServiceType, need


def _flushall(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
        if not sock.recv(16).startswith(b"+OK"):
            raise TestEnvError(f"FLUSHALL on {host}:{port} did not answer +OK")


def _local(pod: PodSpec, workdir: Path) -> Launch:
    (port,) = pod.ports.values()
    argv = [need("redis-server", "redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--dir", str(workdir), "--save", "", "--appendonly", "no"]
    return Launch(argv, dict(os.environ), (port,))


_PING = Ping.answered_by(b"*1\r\n$4\r\nPING\r\n", b"+PONG")
REDIS = ServiceType(
    "redis",
    variables=("REDIS_URL",),
    ping=_PING,
    ready_ping=_PING,  # as strong as the pod's probe, `redis-cli ping`
    reset=_flushall,
    local=_local,
)
TYPES = (REDIS,)
