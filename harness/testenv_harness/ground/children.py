"""Child processes tied to the run that started them: a `kill -9` of the run ends them too."""

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
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True
