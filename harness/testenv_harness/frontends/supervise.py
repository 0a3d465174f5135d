"""Run the user's command under `testenv run`: pass signals on, and return its exit status.

Ctrl-C at a terminal reaches the whole foreground process group, the command included, so a
SIGINT is passed on only when it cannot have reached the command that way (no terminal, or
testenv not in its foreground group): a second SIGINT makes runners such as Ginkgo skip their
clean-up. SIGTERM and SIGHUP are passed on as SIGTERM. A command still running `grace` seconds
after the first signal is killed, so the teardown that follows never waits on it forever. The
command gets SIGTERM from the kernel if testenv itself is killed with -9.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

from testenv_harness.ground.children import dies_with_parent

#: Seconds a command has to exit after the first signal before it is killed.
GRACE_SECONDS = 30.0
_PASSED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def exit_status(returncode: int) -> int:
    """A shell's view of a child's status: 128 + N for a child that died of signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _terminal_delivered_sigint() -> bool:
    """Whether a SIGINT we got came from a terminal that sent it to our whole process group."""
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
        except (OSError, ValueError, AttributeError):
            continue
    return False


def run_command(
    argv: Sequence[str],
    env: Mapping[str, str],
    report: Callable[[str], None],
    grace: float = GRACE_SECONDS,
) -> tuple[int, int | None]:
    """Run `argv` to its end; returns (its exit status, the signal that interrupted the run or None).

    FileNotFoundError when `argv[0]` is no command.
    """
    process = subprocess.Popen(list(argv), env=dict(env), preexec_fn=dies_with_parent(signal.SIGTERM))
    received: list[int] = []

    def kill_later() -> None:
        if process.poll() is None:
            report(f"the command did not exit {grace:.0f}s after the signal: killing it")
            process.kill()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        first = not received
        received.append(signum)
        if process.poll() is not None:
            return
        if signum == signal.SIGINT:
            if not _terminal_delivered_sigint():
                process.send_signal(signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM)
        if first:
            report(f"got {signal.Signals(signum).name}: waiting for the command to stop, then tearing down")
            timer = threading.Timer(grace, kill_later)
            timer.daemon = True
            timer.start()

    previous = {sig: signal.signal(sig, on_signal) for sig in _PASSED}
    try:
        returncode = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return exit_status(returncode), (received[0] if received else None)
