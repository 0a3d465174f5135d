"""`testenv fault` on a run the CLI holds: the fault reaches one worker's forward in the run's
process, for the seconds asked, and the other worker never notices."""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from testenv_harness.run import runstate
from tests.suites import TESTENV

PING = b"*1\r\n$4\r\nPING\r\n"


@pytest.fixture
def run_name() -> Iterator[str]:
    name = f"faults-{uuid.uuid4().hex[:6]}"
    yield name
    if runstate.load(name) is not None:
        subprocess.run([*TESTENV, "down", "--run", name], capture_output=True, timeout=300, check=False)


def _testenv(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TESTENV, *args], capture_output=True, text=True, timeout=timeout, check=False)


def _pings(port: int, until: threading.Event, seen: list[float]) -> None:
    """PING on one connection every 50 ms until `until`, noting how long each took."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        while not until.is_set():
            started = time.monotonic()
            sock.sendall(PING)
            assert sock.recv(100) == b"+PONG\r\n"
            seen.append(time.monotonic() - started)
            time.sleep(0.05)


def test_a_fault_for_seconds_slows_one_workers_redis_only(where: list[str], run_name: str) -> None:
    up = _testenv(
        "up", "--service", "redis", "--workers", "2", "--forward", "--run", run_name, *where, timeout=600
    )
    assert up.returncode == 0, up.stderr
    ports = [
        int(
            json.loads(_testenv("env", "--run", run_name, "--worker", str(i), "-o", "json").stdout)[
                "REDIS_PORT"
            ]
        )
        for i in range(2)
    ]
    stop = threading.Event()
    seen: list[list[float]] = [[], []]
    pingers = [threading.Thread(target=_pings, args=(port, stop, seen[i])) for i, port in enumerate(ports)]
    for pinger in pingers:
        pinger.start()
    try:
        fault = _testenv(
            "fault",
            "redis",
            "latency",
            "--run",
            run_name,
            "--worker",
            "1",
            "--set",
            "latency=300",
            "--for",
            "3",
        )
        assert fault.returncode == 0, fault.stderr
        assert "worker 1: redis latency (latency=300" in fault.stderr
        during = [list(s) for s in seen]
        time.sleep(0.5)
    finally:
        stop.set()
        for pinger in pingers:
            pinger.join(10)
    # Worker 0 never noticed: no PING of its went through a 300 ms toxic. (A PING takes a few ms,
    # with spikes of a tenth of a second or two on 2 busy cores: `make test` runs two tiers.)
    assert statistics.median(during[0]) < 0.05, during[0]
    assert max(during[0]) < 0.3, during[0]
    slow = [t for t in during[1] if t >= 0.3]
    assert len(slow) >= 5, during[1]  # about three seconds of 300 ms PINGs
    after = seen[1][len(during[1]) + 1 :]
    assert after, seen[1]
    assert statistics.median(after) < 0.1, seen[1]  # and it ended with the command

    listed = _testenv("fault", "--list", "--run", run_name, "--worker", "1")
    assert (listed.returncode, listed.stdout) == (0, "")
    bad = _testenv("fault", "redis", "latency", "--run", run_name, "--worker", "1", "--set", "rate=5")
    assert bad.returncode == 1
    assert "latency has no attribute 'rate'" in bad.stderr, bad.stderr
    kept = _testenv("fault", "redis", "down", "--run", run_name, "--worker", "0")
    assert kept.returncode == 0, kept.stderr
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ports[0]), timeout=5)
    assert _testenv("fault", "--list", "--run", run_name, "--worker", "0").stdout == "redis down\n"
    cleared = _testenv("fault", "--clear", "redis", "--run", run_name, "--worker", "0")
    assert cleared.returncode == 0
    assert "1 fault(s) ended" in cleared.stderr, cleared.stderr
    with socket.create_connection(("127.0.0.1", ports[0]), timeout=5) as sock:
        sock.sendall(PING)
        assert sock.recv(100) == b"+PONG\r\n"
    down = _testenv("down", "--run", run_name, timeout=300)
    assert down.returncode == 0, down.stderr
