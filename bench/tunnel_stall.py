"""Benchmark: the tunnel's teardown time and memory when a peer stalls (no cluster needed).

Three scenarios, each in a fresh process of its own so peak memory (VmHWM) is its alone, all
with the harness's real session (spdy.Session), websocket pipe (WebsocketPipe) and tunnels
(SpdyTunnel) over local TCP to a fake API server:

- `upload`: an API server that reads nothing. 8 local connections each upload 32 MiB until
  every send is stuck, then the worker's teardown runs (Forwarder.drop_pods, as Forwarder.close
  does). Measured: the teardown's time, whether every connection's thread ended, and RSS.
- `flood`: a pod that streams 512 MiB (in 64 KiB SPDY frames, 64 KiB websocket messages) to a
  local client that reads nothing, while a second connection on the same session waits for
  one reply sent after the flood. Measured: peak RSS over the start, when the stuck connection
  was reset, and when the second connection got its reply.
- `throughput`: the same 512 MiB to a client that reads as fast as it can: what the bounds cost.

Run: `.venv/bin/python bench/tunnel_stall.py` (about 30 s; `--limit` bounds each wait). To measure
other code, put its `testenv_harness` first on PYTHONPATH. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from testenv_harness.tunnel import portforward, spdy
from testenv_harness.tunnel.portforward import Forwarder, SpdyTunnel
from testenv_harness.tunnel.wspipe import WebsocketPipe

MiB = 1024 * 1024


def memory() -> dict[str, float]:
    """VmRSS and VmHWM of this process, in MiB."""
    fields: dict[str, float] = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) / 1024
    return fields


class _Websocket:
    """What WebsocketPipe takes from websocket-client's handshake: the upgraded socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


def _session(server: socket.socket) -> tuple[spdy.Session, socket.socket]:
    """A session as open_session makes one, over a TCP connection to `server`; (session, peer)."""
    ours = socket.create_connection(server.getsockname())
    theirs, _ = server.accept()
    pipe = WebsocketPipe(_Websocket(ours))  # type: ignore[arg-type]
    session = spdy.Session(pipe.send, pipe.receive, "bench/pod")
    session.on_close = pipe.close
    threading.Thread(target=session.run, daemon=True).start()
    return session, theirs


def _wait(predicate: Callable[[], bool], limit: float) -> float | None:
    """Seconds until `predicate()` held, or None if it did not within `limit`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > limit:
            return None
        time.sleep(0.005)
    return time.monotonic() - start


def upload(limit: float) -> dict[str, Any]:
    server = socket.create_server(("127.0.0.1", 0))
    session, _peer = _session(server)  # the peer reads nothing, ever
    # Every connection is opened first: once the uploads are stuck, a new one would wait for
    # the session's writer (at most the pipe's send timeout).
    pairs = [socket.socketpair() for _ in range(8)]
    tunnels = [SpdyTunnel(local, session, 6379, n, "pod") for n, (_, local) in enumerate(pairs)]
    runners = [threading.Thread(target=tunnel.run, daemon=True) for tunnel in tunnels]
    for runner, (client, _) in zip(runners, pairs, strict=True):
        runner.start()
        threading.Thread(target=_send_quietly, args=(client, 32 * MiB), daemon=True).start()
    time.sleep(2)  # every send is stuck by now: the API server's socket is full
    before = memory()
    forwarder = Forwarder.__new__(Forwarder)  # only what drop_pods uses
    forwarder._lock = threading.Lock()
    forwarder._sessions = {"pod": [session]}
    forwarder.tunnels = set(tunnels)
    done = threading.Event()
    start = time.monotonic()

    def teardown() -> None:
        forwarder.drop_pods(lambda _pod: True)
        done.set()

    threading.Thread(target=teardown, daemon=True).start()
    finished = done.wait(limit)
    teardown_s = time.monotonic() - start if finished else None
    ended = _wait(lambda: not any(r.is_alive() for r in runners), limit if finished else 0)
    return {
        "teardown_s": teardown_s,
        "threads_ended_s": ended,
        "rss_mib": before["VmRSS"],
        "hwm_mib": before["VmHWM"],
    }


def _send_quietly(sock: socket.socket, size: int) -> None:
    block = b"u" * MiB  # the client's own memory stays small: the harness's is what is measured
    with contextlib.suppress(OSError):
        for _ in range(size // MiB):
            sock.sendall(block)


def _server_frame(payload: bytes) -> bytes:
    """An unmasked binary websocket frame, as a server sends."""
    size = len(payload)
    if size < 126:
        return bytes([0x82, size]) + payload
    if size < 1 << 16:
        return bytes([0x82, 126]) + struct.pack(">H", size) + payload
    return bytes([0x82, 127]) + struct.pack(">Q", size) + payload


def flood(limit: float, total: int) -> dict[str, Any]:
    server = socket.create_server(("127.0.0.1", 0))
    session, peer = _session(server)
    threading.Thread(target=_drain, args=(peer,), daemon=True).start()  # it reads what we send
    _stuck_client, stuck_local = socket.socketpair()  # its client reads nothing
    other_client, other_local = socket.socketpair()
    stuck = SpdyTunnel(stuck_local, session, 1, 0, "pod")  # data stream 3
    SpdyTunnel(other_local, session, 1, 1, "pod")  # data stream 7
    start_memory = memory()
    message = _server_frame(spdy.data_frame(3, b"f" * (64 * 1024)))
    reply = _server_frame(spdy.data_frame(7, b"+PONG\r\n"))

    def send() -> None:
        with contextlib.suppress(OSError):
            for _ in range(total // (64 * 1024)):
                peer.sendall(message)
            peer.sendall(reply)

    start = time.monotonic()
    reset_s: list[float] = []

    def watch() -> None:
        if stuck._closed.wait(limit * 2):
            reset_s.append(time.monotonic() - start)

    threading.Thread(target=send, daemon=True).start()
    threading.Thread(target=watch, daemon=True).start()
    other_client.settimeout(limit)
    reply_s: float | None = None
    with contextlib.suppress(TimeoutError):
        if other_client.recv(64) == b"+PONG\r\n":
            reply_s = time.monotonic() - start
    end_memory = memory()
    return {
        "flood_mib": total / MiB,
        "reply_s": reply_s,
        "reset_s": reset_s[0] if reset_s else None,
        "rss_start_mib": start_memory["VmRSS"],
        "rss_end_mib": end_memory["VmRSS"],
        "hwm_mib": end_memory["VmHWM"],
        "client_buffer_mib": getattr(portforward, "CLIENT_BUFFER", 0) / MiB,
        "stall_s": getattr(portforward, "CLIENT_STALL_SECONDS", None),
    }


def throughput(limit: float, total: int) -> dict[str, Any]:
    """The same path with a client that reads as fast as it can: what the bounds cost."""
    server = socket.create_server(("127.0.0.1", 0))
    session, peer = _session(server)
    threading.Thread(target=_drain, args=(peer,), daemon=True).start()
    client, local = socket.socketpair()
    SpdyTunnel(local, session, 1, 0, "pod")  # data stream 3
    message = _server_frame(spdy.data_frame(3, b"f" * (64 * 1024)))

    def send() -> None:
        with contextlib.suppress(OSError):
            for _ in range(total // (64 * 1024)):
                peer.sendall(message)

    start = time.monotonic()
    threading.Thread(target=send, daemon=True).start()
    got = 0
    client.settimeout(limit)
    with contextlib.suppress(TimeoutError):
        while got < total and (chunk := client.recv(1 << 20)):
            got += len(chunk)
    took = time.monotonic() - start
    return {"mib": got / MiB, "s": took, "mib_per_s": got / MiB / took, "hwm_mib": memory()["VmHWM"]}


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while sock.recv(1 << 20):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenario", choices=["upload", "flood", "throughput"], help="run one scenario here (internal)"
    )
    parser.add_argument("--limit", type=float, default=20, help="seconds to wait for anything (default 20)")
    parser.add_argument("--flood-mib", type=int, default=512, help="MiB the pod streams (default 512)")
    args = parser.parse_args()
    if args.scenario == "upload":
        print(json.dumps(upload(args.limit)))
        os._exit(0)  # threads stuck in old code must not hold the process
    if args.scenario == "flood":
        print(json.dumps(flood(args.limit, args.flood_mib * MiB)))
        os._exit(0)
    if args.scenario == "throughput":
        print(json.dumps(throughput(args.limit, args.flood_mib * MiB)))
        os._exit(0)
    import testenv_harness.tunnel.spdy as code

    print(f"code: {os.path.dirname(code.__file__)}")
    for scenario in ("upload", "flood", "throughput"):
        command = [sys.executable, __file__, "--scenario", scenario, "--limit", str(args.limit)]
        command += ["--flood-mib", str(args.flood_mib)]
        out = subprocess.run(command, capture_output=True, text=True, timeout=args.limit * 4 + 60)
        print(f"{scenario}: {out.stdout.strip() or out.stderr.strip()[-2000:]}")


if __name__ == "__main__":
    main()
