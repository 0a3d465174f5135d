"""Protocol-level pings through a local forward (or at a Service's DNS name, from inside the
cluster): is the service itself answering?

Pod readiness says the container is ready; on the `local` cluster kwok marks pods Ready
before the host process listens, and on any cluster a port-forward can outlive its pod. A
worker only starts once each of its services answers its own protocol (its descriptor's ping;
`catalog.ping` and `catalog.wait_answering` find it by the service's type).
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from testenv_harness.ground.waiting import WaitTimeoutError, wait_for
from testenv_harness.services.base import Ping

log = logging.getLogger(__name__)


def answers(ping: Ping | None, port: int, timeout: float = 2.0, host: str = "127.0.0.1") -> bool:
    """One attempt: does the server on host:port answer `ping`? With no ping (a custom service's
    unknown protocol), whether the connection stays open: a forward to nothing is closed at once."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if ping is None:
                sock.settimeout(0.5)
                try:
                    return sock.recv(1) != b""
                except TimeoutError:
                    return True
            sock.sendall(ping.request)
            answer = b""
            deadline = time.monotonic() + timeout
            while not ping.healthy(answer) and time.monotonic() < deadline:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                answer += chunk
            return ping.healthy(answer)
    except OSError:
        return False


def wait_answers(ping: Ping | None, port: int, timeout: float, host: str, what: str) -> float:
    """Seconds until host:port answered `ping`; WaitTimeoutError (a TimeoutError) naming `what`
    and the address otherwise."""
    started = time.monotonic()
    wait_for(
        lambda: answers(ping, port, host=host),
        timeout=timeout,
        what=f"{what} on {host}:{port} to answer its protocol",
        seen=lambda: "no answer, or not the protocol's",
    )
    return time.monotonic() - started


#: `first_answer`: seconds between tries, and most tries in flight at once (each waits at most
#: 2 s for its answer, so ten never hold the next one up).
TRY_EVERY = 0.2
TRIES_AT_ONCE = 10


def first_answer(ping: Ping, port: int, timeout: float, what: str, host: str = "127.0.0.1") -> float:
    """Seconds until host:port answered `ping`, trying every TRY_EVERY seconds with up to
    TRIES_AT_ONCE tries in flight: a server that is starting may accept a connection some time
    before it answers on it, and a try waiting on such a connection must not delay the next one.
    WaitTimeoutError (a TimeoutError) naming `what` and the address after `timeout`."""
    started = time.monotonic()
    answered = threading.Event()
    slots = threading.BoundedSemaphore(TRIES_AT_ONCE)

    def attempt() -> None:
        began = time.monotonic()
        try:
            if answers(ping, port, timeout=2.0, host=host):
                answered.set()
            log.debug(
                "%s: a try %s after %.2fs",
                what,
                "answered" if answered.is_set() else "failed",
                time.monotonic() - began,
            )
        finally:
            slots.release()

    while not answered.is_set():
        left = timeout - (time.monotonic() - started)
        if left <= 0:
            seen = "no answer, or not one its readiness probe would take"
            raise WaitTimeoutError(f"{what} on {host}:{port} to answer as ready", timeout, seen)
        if slots.acquire(timeout=min(TRY_EVERY, left)):
            threading.Thread(target=attempt, name=f"ping-{port}", daemon=True).start()
            answered.wait(min(TRY_EVERY, left))
    return time.monotonic() - started
