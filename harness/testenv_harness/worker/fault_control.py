"""Fault commands for a worker forwarded by another process, over a Unix socket (0600).

Every process that forwards a worker for the `testenv` command (`run`, `up --forward`,
`forward --worker I`) serves one socket per worker; `testenv fault` connects to it. A request
is one JSON line, and so is each answer:

  {"op": "add", "service": S, "toxic": T, "settings": {...}, "hold": false}  -> {"fault": {...}}
  {"op": "clear", "service": S or null}                                       -> {"cleared": N}
  {"op": "list"}                                                              -> {"faults": [...]}

A held fault (`"hold": true`) lasts as long as its connection: the server removes it when the
client says `{"op": "release"}` or goes away (Ctrl-C, kill -9). Failures answer {"error": why}.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from io import BufferedRWPair
from pathlib import Path
from typing import Any

from testenv_harness.ground.errors import TestEnvError
from testenv_harness.worker.fault_wire import address, send
from testenv_harness.worker.network_faults import NetworkFaults


class FaultControl:
    """Serves fault commands for one forwarded worker until `close`."""

    def __init__(self, env: NetworkFaults, path: Path) -> None:
        self.env = env
        self.path = path
        path.unlink(missing_ok=True)  # one a killed process left (the folder is this user's alone)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with address(path) as where:
            self.server.bind(where)
            os.chmod(where, 0o600)
        self.server.listen(8)
        self._closed = False
        threading.Thread(target=self._accept, name=f"faults-w{env.worker}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                peer, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(peer,), daemon=True).start()

    def _serve(self, peer: socket.socket) -> None:
        with contextlib.suppress(OSError), peer, peer.makefile("rwb") as stream:  # OSError: client gone
            for line in stream:
                try:
                    request = json.loads(line)
                    answer = self._handle(request, stream)
                except (TestEnvError, ValueError) as exc:
                    answer = {"error": str(exc)}
                if answer is None:
                    return
                send(stream, answer)

    def _handle(self, request: dict[str, Any], stream: BufferedRWPair[Any, Any]) -> dict[str, Any] | None:
        op = request.get("op")
        env = self.env
        if op == "list":
            return {"faults": [fault.describe() for fault in env.faults()]}
        if op == "clear":
            return {"cleared": env.clear_faults(request.get("service"))}
        if op != "add":
            raise ValueError(f"unknown request {op!r}: add, clear or list")
        fault = env.start_fault(str(request["service"]), str(request["toxic"]), **request.get("settings", {}))
        if not request.get("hold"):
            return {"fault": fault.describe()}
        try:
            send(stream, {"fault": fault.describe()})
            stream.readline()  # the release, or the client went away
        finally:
            env.stop_fault(fault)
        with contextlib.suppress(OSError):
            send(stream, {"ended": fault.describe()})
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.path.unlink(missing_ok=True)
