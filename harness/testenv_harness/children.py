"""Child processes tied to the run that started them: a `kill -9` of the run ends them too."""

from __future__ import annotations

import ctypes
import signal
import subprocess
from collections.abc import Callable
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
