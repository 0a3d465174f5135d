"""Network faults through the pytest plugin: each toxic changes what a real Redis client of one
worker sees, while the other worker pings its own Redis at the same time and never notices."""

from __future__ import annotations

import textwrap

import pytest

from tests.suites import Run

SUITE = '''
import socket
import statistics
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from testenv_harness.ground.waiting import wait_for

FAULTY = 1


def _mark(testenv, name):
    folder = testenv.handoff.run_path / "faults"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).touch()


def _wait(testenv, name):
    folder = testenv.handoff.run_path / "faults"
    wait_for(lambda: (folder / name).exists(), timeout=120, what=name, interval=0.02)


def client(testenv, timeout=10):
    return redis.Redis.from_url(testenv.url("redis"), socket_timeout=timeout, retry=Retry(NoBackoff(), 0))


def took(call):
    started = time.monotonic()
    call()
    return time.monotonic() - started


@pytest.fixture
def faulty(testenv, request):
    """On worker 1: the test's faults, with the other worker watching. On worker 0: the watcher,
    pinging its own Redis until worker 1 is done, its checks done in this fixture: the test gets
    None there and returns (a pass: the watcher's checks are what worker 0 tests)."""
    name = request.node.name
    r = client(testenv)
    r.ping()
    if testenv.worker != FAULTY:
        _wait(testenv, f"{name}.faulty")
        _mark(testenv, f"{name}.watching")
        pings = []
        deadline = time.monotonic() + 120
        while not (testenv.handoff.run_path / "faults" / f"{name}.done").exists():
            assert time.monotonic() < deadline, f"worker {FAULTY} never finished {name}"
            pings.append(took(r.ping))
            time.sleep(0.02)
        assert pings, "worker 0 never pinged while the fault was on"
        # Through worker 1's latency toxic a ping takes 250 ms at least: none may. (A ping's own
        # time is a few ms, with spikes of 0.2 s on 2 busy cores: `make test` runs two tiers.)
        assert statistics.median(pings) < 0.05, pings
        assert max(pings) < 0.25, pings
        yield None
        return
    _mark(testenv, f"{name}.faulty")
    _wait(testenv, f"{name}.watching")
    yield r
    _mark(testenv, f"{name}.done")


def test_latency(testenv, faulty):
    if faulty is None:
        return  # worker 0: the fixture watched
    with testenv.fault("redis", "latency", latency=300, jitter=50):
        assert took(faulty.ping) >= 0.25
        assert took(faulty.ping) >= 0.25
    assert min(took(faulty.ping) for _ in range(3)) < 0.1  # one ping may be slow on 2 busy cores


def test_bandwidth(testenv, faulty):
    if faulty is None:
        return  # worker 0: the fixture watched
    faulty.set("big", b"v" * 300_000)
    with testenv.fault("redis", "bandwidth", rate=100):
        assert took(lambda: faulty.get("big")) >= 2.5
    assert took(lambda: faulty.get("big")) < 1


def test_timeout_stalls_then_restores(testenv, faulty):
    if faulty is None:
        return  # worker 0: the fixture watched
    with testenv.fault("redis", "timeout", timeout=0):
        with pytest.raises(redis.TimeoutError):
            client(testenv, timeout=0.5).ping()
    assert faulty.ping()


def test_reset_peer(testenv, faulty):
    if faulty is None:
        return  # worker 0: the fixture watched
    host, port = testenv.endpoint("redis")
    with testenv.fault("redis", "reset_peer", timeout=0):
        # A reset, never an answer, never a clean end (b""). The send or the read sees it, or the
        # connect itself: on busy cores the reset can come before connect() has returned.
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            with socket.create_connection((host, port), timeout=5) as sock:
                sock.sendall(b"PING\\r\\n")
                sock.recv(64)
    assert client(testenv).ping()


def test_down_refuses_and_cuts(testenv, faulty):
    if faulty is None:
        return  # worker 0: the fixture watched
    host, port = testenv.endpoint("redis")
    with socket.create_connection((host, port), timeout=5) as open_one:
        with testenv.fault("redis", "down"):
            try:  # cut: the end of the stream, or a reset when the close met bytes in flight
                assert open_one.recv(10) == b""
            except ConnectionResetError:
                pass
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((host, port), timeout=5)
    assert client(testenv).ping()
'''


def test_each_toxic_hits_one_worker_and_the_other_never_notices(
    run_suite: Run, pytester: pytest.Pytester
) -> None:
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_services = redis\n")
    pytester.makepyfile(test_faults=textwrap.dedent(SUITE))
    result = run_suite("-n", "2", "--dist", "each")
    result.assert_outcomes(passed=10)
