"""The fault sockets' wire (worker/fault_control.py serves it): where to connect, one JSON line
per message, and the client `testenv fault` and a kept environment's workers use."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from io import BufferedRWPair
from pathlib import Path
from typing import Any

from testenv_harness.ground.errors import TestEnvError

#: The longest Unix socket path bound as it is; a longer one is reached through its folder's fd.
_MAX_PATH = 100


@contextlib.contextmanager
def address(path: Path) -> Iterator[str]:
    """`path`, or for a path too long for sockaddr_un, the same file through /proc/self/fd."""
    if len(os.fsencode(path)) <= _MAX_PATH:
        yield str(path)
        return
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{folder}/{path.name}"
    finally:
        os.close(folder)


def send(stream: BufferedRWPair[Any, Any], answer: dict[str, Any]) -> None:
    stream.write(json.dumps(answer).encode() + b"\n")
    stream.flush()


class ControlClient:
    """One connection to a worker's fault socket (OSError if nothing serves it)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with address(path) as where:
                self.sock.connect(where)
        except OSError:
            self.sock.close()
            raise
        self.stream = self.sock.makefile("rwb")

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send a request; its answer (TestEnvError carrying the server's error)."""
        send(self.stream, request)
        return self.answer()

    def answer(self) -> dict[str, Any]:
        line = self.stream.readline()
        if not line:
            raise TestEnvError("the forwarding process closed the fault socket (it is stopping?)")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise TestEnvError(str(answer["error"]))
        return answer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stream.close()
        self.sock.close()
