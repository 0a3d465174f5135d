"""A reuse keeper serves the runs that claim it: its workers forwarded, their services clean.

The keeper (`testenv up --foreground --forward --idle-exit`, see reuse.py) forwards every worker
from its own process, so the ports a rerun's workers use answer before the rerun starts. Once a
run releases the environment, the keeper resets every service in the background. A run that
claims the environment asks the keeper, over its socket (`<name>.sock` in the private run-state
folder), for clean services; the keeper answers once a reset under way is done, or after one of
its own if the last run's use was not reset yet. The rerun's workers then only read their
endpoints: no API client, no forward and no reset of their own before the first test.

The keeper also checks its environment for the run, against the API server at that moment (there,
the same object, and Ready for the run's workers), and hands over its status. The claiming run
needs no Kubernetes client of its own: the keeper has one loaded and its cluster's address at hand.

One request, one line of JSON, and two back: {"ask": "clean", "workers": N} -> {"checking": true}
at once, then {"clean": true, "reset": seconds, "status": {...}}, {"unusable": "why"} or
{"error": "..."}. A keeper of an older version answers in one line, without "status"; the run then
replaces it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testenv_harness.ground.errors import ClusterError
from testenv_harness.run import runstate
from testenv_harness.worker.fault_wire import address
from testenv_harness.worker.testenv import TestEnv

#: Seconds a run waits for the keeper's answer: its check of the environment (which waits a while
#: for one that is not Ready yet) and a reset of every worker's services, at most.
ANSWER_SECONDS = 180.0
#: Seconds a keeper may take to take a request up (it says so before it checks and resets): one
#: that does not (stopped, hung) is checked by the run itself.
ACK_SECONDS = 5.0
#: Seconds a Ready keeper may take to open its socket.
OPEN_SECONDS = 10.0
#: Bytes a request may take; an answer carries the environment's status, which grows with its workers.
_MAX_REQUEST = 4096
_MAX_ANSWER = 16 * 1024 * 1024


def socket_path(name: str) -> Path:
    return runstate.folder() / f"{name}.sock"


class NotClaimableError(ClusterError):
    """The keeper's environment cannot serve the claiming run (gone, failed, not Ready): the
    message says why; the run ends the keeper and sets up afresh."""


#: A keeper's check for a claiming run: the environment's status if it can serve that many
#: workers now, else NotClaimableError.
Check = Callable[[int], dict[str, Any]]


class KeeperSilentError(ClusterError):
    """The keeper did not take a claim's request up: the run looks at the environment itself."""


@dataclass(frozen=True)
class Handed:
    """A keeper's answer to a claim: seconds it spent on the reset, and the environment's status
    as it checked it (None from a keeper of an older version, which did not check)."""

    reset: float
    status: dict[str, Any] | None


class KeeperService:
    """The keeper's side: resets after each use, and the socket that checks the environment for a
    claiming run and hands out clean services."""

    def __init__(
        self, name: str, envs: list[TestEnv], report: Callable[[str], None], check: Check | None = None
    ) -> None:
        self.name = name
        self.envs = envs
        self.report = report
        self.check = check
        #: A run was given the services since their last reset.
        self.dirty = False
        self._reset_lock = threading.Lock()
        self._closed = False
        self.path = socket_path(name)
        self.path.unlink(missing_ok=True)  # a dead keeper's of the same name
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is created 0600: only this user may ask
        try:
            with address(self.path) as where:
                self._server.bind(where)
        finally:
            os.umask(old)
        self._server.listen(8)
        self._thread = threading.Thread(target=self._accept, name=f"keeper-{name}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10)
                request = json.loads(_read_line(conn))
                if request.get("ask") != "clean":
                    raise ValueError(f"unknown request {request!r}")
                conn.sendall(b'{"checking": true}\n')  # alive: the run waits for the rest
                reply = self._claim(request.get("workers"))
            except Exception as exc:  # the asking run says it and sets up afresh
                reply = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def _claim(self, workers: object) -> dict[str, object]:
        """The reply to a claim: check the environment for `workers` (when the run says how many),
        then clean services."""
        status: dict[str, Any] | None = None
        if isinstance(workers, int) and self.check is not None:
            try:
                status = self.check(workers)
            except NotClaimableError as exc:
                return {"unusable": str(exc)}
        reply: dict[str, object] = {"clean": True, "reset": self.hand_out()}
        if status is not None:
            reply["status"] = status
        return reply

    def hand_out(self) -> float:
        """Clean services for a run that claimed them: wait for a reset under way, or reset now if
        the last run's use was not; they count as used from here on. The seconds it waited."""
        began = time.monotonic()
        with self._reset_lock:
            if self.dirty:
                self._reset()
            self.dirty = True
        return time.monotonic() - began

    def tidy(self) -> None:
        """While no run holds the environment: reset what the last one used, ahead of the next."""
        if not self.dirty or not self._reset_lock.acquire(blocking=False):
            return
        try:
            if self.dirty:
                began = time.monotonic()
                self._reset()
                self.report(f"reset every service for the next run in {time.monotonic() - began:.1f}s")
        except Exception as exc:  # the next run's request resets again, and says so if it fails
            self.report(f"could not reset the services after the last run: {exc}")
            return
        finally:
            self._reset_lock.release()

    def _reset(self) -> None:
        with ThreadPoolExecutor(max_workers=max(len(self.envs), 1)) as pool:
            list(pool.map(lambda env: env.reset_all(), self.envs))
        self.dirty = False

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._server.close()
        self.path.unlink(missing_ok=True)


def _read_line(conn: socket.socket) -> str:
    """A run's request: one line of at most _MAX_REQUEST bytes."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > _MAX_REQUEST:
            raise ValueError(f"a request of over {_MAX_REQUEST} bytes")
    return data.decode()


def _connect(conn: socket.socket, path: Path) -> None:
    """A keeper opens its socket just after it says Ready: allow it a moment."""
    deadline = time.monotonic() + OPEN_SECONDS
    while True:
        try:
            with address(path) as where:
                conn.connect(where)
            return
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def claim(name: str, workers: int, timeout: float = ANSWER_SECONDS) -> Handed:
    """A claiming run's request to keeper `name`: check the environment for `workers` workers and
    hand out clean services. NotClaimableError if the environment cannot serve them;
    KeeperSilentError if the keeper does not take the request up within ACK_SECONDS (stopped,
    hung); ClusterError if it does not finish its answer, or cannot reset."""
    path = socket_path(name)
    request = json.dumps({"ask": "clean", "workers": workers}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(ACK_SECONDS)
            _connect(conn, path)
            conn.sendall(request)
            with conn.makefile("rb") as lines:
                try:
                    reply = json.loads(lines.readline(_MAX_ANSWER) or b"{}")
                except TimeoutError as exc:
                    raise KeeperSilentError(
                        f"keeper {name!r} did not take the request up within {ACK_SECONDS:.0f}s"
                    ) from exc
                if reply.get("checking"):
                    conn.settimeout(timeout)
                    reply = json.loads(lines.readline(_MAX_ANSWER) or b"{}")
    except (OSError, ValueError) as exc:
        raise ClusterError(f"keeper {name!r} did not answer on {path}: {exc}") from exc
    if "unusable" in reply:
        raise NotClaimableError(str(reply["unusable"]))
    if not reply.get("clean"):
        raise ClusterError(f"keeper {name!r} could not hand out clean services: {reply.get('error')}")
    status = reply.get("status")
    return Handed(float(reply.get("reset") or 0.0), status if isinstance(status, dict) else None)
