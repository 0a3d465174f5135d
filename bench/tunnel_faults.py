"""Benchmark: what network faults cost the forward, and how exact an added latency is.

One run (`testenv up --service redis --workers 1 --forward`) on the local cluster `faults-bench`;
the bench talks RESP to the worker's forwarded Redis from this process and changes faults with
`testenv fault` (the run's process applies them in its forwarder). Measured:

- throughput: GET of a 1 MiB value on one connection, MB/s (median of --rounds rounds);
- new connection: connect + PING + reply on a fresh connection, p50 in ms;
each with no fault (the tunnel's own path), and with a latency toxic of 0 ms (every byte through
a toxic pipeline); and the added latency asked (50, 100, 300 ms) against PING's p50 and p99.

To measure other code (the forwarder before faults), put its harness first on PYTHONPATH:
`PYTHONPATH=/tmp/faults-base/harness:/tmp/faults-base/operator python bench/tunnel_faults.py
--no-faults`. Prints markdown tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

TESTENV = [sys.executable, "-m", "testenv_harness"]
VALUE = 1024 * 1024


def _testenv(*args: str) -> str:
    done = subprocess.run([*TESTENV, *args], capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"testenv {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _read_reply(sock: socket.socket, size: int) -> None:
    got = 0
    while got < size:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the forward closed the connection")
        got += len(chunk)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _throughput(port: int, rounds: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_command(b"SET", b"big", b"v" * VALUE))
        _read_reply(sock, 5)
        rates = []
        for _ in range(rounds):
            started = time.monotonic()
            for _ in range(8):
                sock.sendall(_command(b"GET", b"big"))
                _read_reply(sock, VALUE + len(b"$%d\r\n\r\n" % VALUE))
            rates.append(8 * VALUE / 1e6 / (time.monotonic() - started))
    return statistics.median(rates)


def _timed(call: Callable[[], None], count: int) -> list[float]:
    took = []
    for _ in range(count):
        started = time.monotonic()
        call()
        took.append((time.monotonic() - started) * 1000)
    return took


def _new_connection(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_command(b"PING"))
        _read_reply(sock, 7)


def _pings(port: int, count: int) -> list[float]:
    with socket.create_connection(("127.0.0.1", port)) as sock:

        def ping() -> None:
            sock.sendall(_command(b"PING"))
            _read_reply(sock, 7)

        return _timed(ping, count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cluster-name", default="faults-bench")
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds of 8 MiB (default 5)")
    parser.add_argument("--count", type=int, default=60, help="connections / PINGs per figure (default 60)")
    parser.add_argument("--no-faults", action="store_true", help="only the path without faults (older code)")
    parser.add_argument("--keep-cluster", action="store_true")
    args = parser.parse_args()
    run = f"bench-faults-{uuid.uuid4().hex[:4]}"
    where = ["--cluster", "local", "--cluster-name", args.cluster_name, "--namespace", run]
    _testenv("up", "--service", "redis", "--workers", "1", "--forward", "--run", run, *where)
    try:
        port = int(json.loads(_testenv("env", "--run", run, "--worker", "0", "-o", "json"))["REDIS_PORT"])
        rows = []
        cases = [("no fault", [])] + ([] if args.no_faults else [("latency 0 ms", ["--set", "latency=0"])])
        for label, settings in cases:
            if settings:
                _testenv("fault", "redis", "latency", "--run", run, "--worker", "0", *settings)
            mbs = _throughput(port, args.rounds)
            connect = statistics.median(_timed(lambda: _new_connection(port), args.count))
            ping = statistics.median(_pings(port, args.count))
            rows.append(f"| {label} | {mbs:.0f} | {connect:.2f} | {ping:.2f} |")
            if settings:
                _testenv("fault", "--clear", "--run", run, "--worker", "0")
        print("| forward | GET 1 MiB, MB/s | new connection p50, ms | PING p50, ms |")
        print("|---|---:|---:|---:|")
        print("\n".join(rows))
        if args.no_faults:
            return
        print("\n| latency asked, ms | PING p50, ms | PING p99, ms |")
        print("|---:|---:|---:|")
        for asked in (50, 100, 300):
            _testenv("fault", "redis", "latency", "--run", run, "--worker", "0", "--set", f"latency={asked}")
            took = _pings(port, max(20, args.count // (asked // 50)))
            _testenv("fault", "--clear", "--run", run, "--worker", "0")
            print(f"| {asked} | {_percentile(took, 0.5):.1f} | {_percentile(took, 0.99):.1f} |")
    finally:
        subprocess.run([*TESTENV, "down", "--run", run], capture_output=True, timeout=600, check=False)
        if not args.keep_cluster:
            subprocess.run(
                [*TESTENV, "cluster", "down", "--name", args.cluster_name],
                capture_output=True,
                timeout=600,
                check=False,
            )


if __name__ == "__main__":
    main()
