"""The real forward (API server, port-forward, Redis) under clients that misbehave. A client that
reads nothing: the worker process holds a bounded buffer for it, its connection is reset alone,
the rest goes on. Connections the pod refuses: the forward goes on serving the others.

The inner suite runs without xdist, so the forwarder lives in the test's own process and its
memory is the test's (VmRSS, sampled while Redis streams replies nobody reads).
"""

from __future__ import annotations

import pytest

from tests.suites import Run

STUCK_CLIENT = """
import socket
import threading
import time

from testenv_harness.tunnel import portforward

MiB = 1024 * 1024
VALUE = 8 * MiB
GETS = 24  # 192 MiB of replies
STALL = getattr(portforward, "CLIENT_STALL_SECONDS", 5.0)  # (so it runs, and fails, without it)


def rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def command(sock, *words):
    wire = f"*{len(words)}\\r\\n".encode()
    for word in words:
        raw = word if isinstance(word, bytes) else word.encode()
        wire += b"$%d\\r\\n%s\\r\\n" % (len(raw), raw)
    sock.sendall(wire)


def ping(host, port):
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=30) as sock:
        command(sock, "PING")
        assert sock.recv(64) == b"+PONG\\r\\n"
    return time.monotonic() - start


def test_a_client_that_reads_nothing_is_bounded_and_reset_alone(testenv):
    host, port = testenv.host_port("redis")
    with socket.create_connection((host, port), timeout=30) as setter:
        command(setter, "SET", "big", b"v" * VALUE)
        assert setter.recv(64) == b"+OK\\r\\n"
    ping(host, port)  # the sessions to the pod are open and warm

    before = rss_mib()
    peak = [before]
    sampling = threading.Event()

    def sample():
        while not sampling.wait(0.05):
            peak.append(rss_mib())

    threading.Thread(target=sample, daemon=True).start()
    stuck = socket.create_connection((host, port), timeout=30)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    for _ in range(GETS):
        command(stuck, "GET", "big")  # and never read the replies

    # Other connections to the pod go to a session the stuck one does not hold up.
    pings = []
    deadline = time.monotonic() + STALL + 10
    while time.monotonic() < deadline:
        pings.append(ping(host, port))
        time.sleep(0.2)
    slowest = max(pings)
    sampling.set()

    # The stuck connection was reset: what the kernel held for it, then its end.
    got = 0
    stuck.settimeout(10)
    try:
        while chunk := stuck.recv(1 << 20):
            got += len(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    stuck.close()
    grew = max(peak) - before
    print(f"RSS grew {grew:.1f} MiB; the stuck client got {got / MiB:.1f} of {GETS * VALUE / MiB:.0f} MiB; "
          f"slowest PING {slowest:.2f}s")
    assert grew < 64, f"the worker process grew by {grew:.0f} MiB for a client that reads nothing"
    assert got < GETS * VALUE / 2, "the stuck connection was not reset"
    assert slowest < STALL / 2, f"a PING waited behind the stuck client: {[round(p, 2) for p in pings]}"
    assert ping(host, port) < 5
"""


def test_a_client_that_reads_nothing_costs_the_worker_a_bounded_buffer(
    pytester: pytest.Pytester, run_suite: Run
) -> None:
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_services = redis\n")
    pytester.makepyfile(test_stuck_client=STUCK_CLIENT)
    result = run_suite("-p", "no:xdist", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*RSS grew * MiB; the stuck client got * MiB; slowest PING *s*"])


REFUSED = """
import socket
import time

from testenv_harness.ground.localports import free_port

#: Enough refused connections to reach every frame worker (five per session) of every session.
REFUSALS = 40


def ping(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(10)
        sock.sendall(b"*1\\r\\n$4\\r\\nPING\\r\\n")
        return sock.recv(64)


def test_connections_the_pod_refuses_leave_the_forward_serving(testenv):
    _, port = testenv.host_port("redis")
    assert ping(port) == b"+PONG\\r\\n"
    nowhere = free_port()
    testenv.forwarder.listen("redis", 6390, nowhere)  # nothing listens on 6390 in the pod
    started = time.monotonic()
    for _ in range(REFUSALS):
        try:
            got = ping(nowhere)  # the client writes at once, as clients do
        except ConnectionResetError:
            got = b""
        assert got == b"", f"port 6390 answered {got!r}"
    refused = time.monotonic() - started
    pings = []
    for _ in range(10):  # new connections, each on a new pair of streams
        started = time.monotonic()
        assert ping(port) == b"+PONG\\r\\n"
        pings.append(time.monotonic() - started)
    print(f"{REFUSALS} refused in {refused:.1f}s; then PING took {[round(p, 2) for p in pings]}")
"""


def test_connections_the_pod_refuses_leave_the_forward_serving(
    pytester: pytest.Pytester, run_suite: Run
) -> None:
    """A refused stream's bytes are never read by the kubelet's SPDY server, which holds up one of
    its five frame workers for good: sessions that carried them must not be used again."""
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_services = redis\n")
    pytester.makepyfile(test_refused=REFUSED)
    result = run_suite("-p", "no:xdist", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*40 refused in *s; then PING took*"])
