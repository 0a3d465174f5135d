"""Ports on this machine's loopback interface, and blocks of them reserved for one run.

A run plans its local ports when it starts, but its workers bind them seconds later. So that
two runs on one machine never plan the same block, each block is written to a reservation file
(under a lock) for as long as the run's process lives: its PID and that process's start time,
so that a PID used again by another process does not keep the block.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import socket
import threading
from collections.abc import Iterable, Set
from pathlib import Path

from testenv_harness.ground import files
from testenv_harness.ground.children import alive, is_ours, start_time
from testenv_harness.ground.files import cache_root, locked, write_atomic

#: Where `free_port` looks: below the ephemeral range and below the runs' planned ports (20000 up).
_FREE_PORTS = range(10000, 20000)
#: Ports this process handed out lately: two callers must not get one port before either binds it.
_handed_out: collections.deque[int] = collections.deque(maxlen=256)
_handing_out = threading.Lock()


def free_port() -> int:
    """A port nothing listens on right now, for a listener this process is about to start.

    Not the kernel's pick: that comes from the ephemeral range, where any outgoing connection on
    the machine (the test process's own to the API server) may take it as its source port before
    the listener binds it, which failed a forward now and then with "address in use"."""
    with _handing_out:
        for port in random.sample(_FREE_PORTS, 200):
            if port not in _handed_out and bindable(port):
                _handed_out.append(port)
                return port
    with socket.socket() as sock:  # everything sampled was taken: the kernel's pick after all
        sock.bind(("127.0.0.1", 0))
        picked: int = sock.getsockname()[1]
        return picked


def bindable(port: int) -> bool:
    """Whether a listener could bind `port` now (a port only in TIME_WAIT counts as free)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


#: Where Linux keeps the range of source ports it gives outgoing connections.
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral(port: int) -> bool:
    """Whether `port` lies in this machine's ephemeral range: any outgoing connection may hold it
    as its source port, and a listener cannot bind it meanwhile."""
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return low <= port <= high


def _reservations() -> Path:
    return files.private_dir(cache_root() / "port-reservations")


def _held(pid: int, started: int | None) -> bool:
    """Whether the reserving process still runs (a file of an older version records no start time)."""
    return is_ours(pid, started) if started is not None else alive(pid)


def _taken(folder: Path, skip: Set[str] = frozenset()) -> list[tuple[int, int]]:
    """Blocks reserved by runs that are still alive (but the entries named in `skip`); stale
    reservations are removed."""
    blocks = []
    for entry in folder.glob("*.block"):
        if entry.name in skip:
            continue
        with contextlib.suppress(OSError, ValueError):
            pid, base, count, *rest = (int(x) for x in files.read_private(entry).split())
            if _held(pid, rest[0] if rest else None):
                blocks.append((base, base + count))
            else:
                entry.unlink()
    return blocks


def reserve_block(count: int, run_id: str, start: int = 20000, stop: int = 60000) -> int:
    """The first base of `count` ports, all bindable and reserved by no live run; reserved now."""
    folder = _reservations()
    with locked(folder / ".lock"):
        taken = _taken(folder)
        base = start
        while base + count <= stop:
            overlap = next((end for low, end in taken if low < base + count and base < end), None)
            if overlap is not None:
                base = overlap
                continue
            busy = next((p for p in range(base, base + count) if not bindable(p)), None)
            if busy is None:
                started = start_time(os.getpid()) or 0
                write_atomic(folder / f"{run_id}.block", f"{os.getpid()} {base} {count} {started}")
                return base
            base = busy + 1
    raise OSError(f"no {count} consecutive free local ports between {start} and {stop}")


def _ranges(ports: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted ports as (first, count) runs: 30000, 30001, 30005 -> (30000, 2), (30005, 1)."""
    runs: list[tuple[int, int]] = []
    for port in sorted(set(ports)):
        if runs and runs[-1][0] + runs[-1][1] == port:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((port, 1))
    return runs


def reserve_ports(run_id: str, ports: Iterable[int], tag: str) -> list[int]:
    """Record ports this run forwards that it did not plan itself (a pool's, for workers it
    claimed), so other runs' blocks keep clear of them while it lives. Returns those that another
    live run holds already: both will forward them, and one of the two will find them taken."""
    folder = _reservations()
    wanted = _ranges(ports)
    with locked(folder / ".lock"):
        mine = {entry.name for entry in folder.glob(f"{run_id}.*block")}
        taken = _taken(folder, skip=mine)
        clash = [p for first, count in wanted for p in range(first, first + count) if _inside(p, taken)]
        started = start_time(os.getpid()) or 0
        for number, (first, count) in enumerate(wanted):
            entry = folder / f"{run_id}.{tag}-{number}.block"
            write_atomic(entry, f"{os.getpid()} {first} {count} {started}")
    return clash


def _inside(port: int, blocks: list[tuple[int, int]]) -> bool:
    return any(low <= port < end for low, end in blocks)


def release_block(run_id: str) -> None:
    """Drop every reservation of this run: its block and the ports it recorded besides."""
    folder = _reservations()
    for entry in [folder / f"{run_id}.block", *folder.glob(f"{run_id}.*.block")]:
        with contextlib.suppress(OSError):
            entry.unlink()
