"""Child processes tied to the run that started them (a `kill -9` of the run ends them too), and
processes named in our files: signalled only while they are still the process that was recorded."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def dies_with_parent(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None]:
    """A `preexec_fn` that has the kernel send `sig` to the child when its parent thread exits.

    The signal follows the *thread* that forked, so fork from a thread that lives as long as
    the run (the main thread, or a loop thread that runs to the end).
    """

    def arm() -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)

    return arm


def stop(process: subprocess.Popen[Any], grace: float, after_kill: float = 5) -> None:
    """SIGTERM, and SIGKILL if it is still there `grace` seconds later (a no-op once it exited)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(after_kill)


def alive(pid: int) -> bool:
    """Whether process `pid` is running (a zombie, dead but not yet waited for, is not)."""
    if pid <= 0:  # 0 and -1 name a group or every process to os.kill, never one process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (the state) on: the command name before may hold spaces."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot (field 22 of /proc/<pid>/stat), or
    None when there is no such process. A PID is used again once its process is gone; a PID and
    its start time name one process for as long as the machine runs."""
    fields = _stat_fields(pid) if pid > 0 else None
    try:
        return int(fields[19]) if fields is not None else None
    except (IndexError, ValueError):
        return None


def is_ours(pid: int, started: int, marker: str = "") -> bool:
    """Whether `pid` is alive and still the process a file of ours recorded: the same start time,
    or, for a record without one (`started` 0, made by an older version), `marker` on its command
    line. A PID used again by another process is not ours, whatever it runs."""
    if not alive(pid):
        return False
    if started:
        return start_time(pid) == started
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def signal_ours(pid: int, started: int, sig: signal.Signals, marker: str = "") -> bool:
    """Send `sig` to `pid` only if it is the process recorded (`is_ours`); whether it was sent.

    The process is pinned by a pidfd first, so its PID cannot pass to another process between
    the check and the signal."""
    try:
        pidfd: int | None = os.pidfd_open(pid) if pid > 0 else None
    except ProcessLookupError:
        return False
    except OSError:  # no pidfd on this kernel: check, then kill, as close together as we can
        pidfd = None
    try:
        if not is_ours(pid, started, marker):
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)
