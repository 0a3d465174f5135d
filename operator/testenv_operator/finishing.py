"""Finishing in the background: SIGUSR1 tells a run's own operator that its run has ended.

A test run that started this process as its child deletes its TestEnvironment and exits without
waiting for the namespaces to go (that takes seconds). It sends SIGUSR1 first; this process then

- stops converging anything (a later run's own operator serves its environments),
- stops its orphan sweep,
- undoes the parent-death signal its parent armed, so the run's exit does not stop it,
- and exits once no TestEnvironment of its namespaces is being deleted any more, or after
  TESTENV_FINISH_SECONDS, whichever comes first.

It says `finishing` in its log when it took the request: the run waits for that line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time

from testenv_operator import kubeio
from testenv_operator.runtime import Runtime

log = logging.getLogger("testenv_operator")

#: The first words of the line logged when the request is taken (the harness waits for them).
TAKEN = "finishing:"
#: Seconds between checks for environments still being deleted.
CHECK_SECONDS = 0.5
#: Seconds without an answer from the API server (a deleted cluster) after which it gives up.
UNREACHABLE_SECONDS = 15.0
_PR_SET_PDEATHSIG = 1


def listen(runtime: Runtime) -> None:
    """Take SIGUSR1 as the request to finish (on the running loop)."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: _start(runtime))


def _start(runtime: Runtime) -> None:
    if runtime.finishing:
        return
    runtime.finishing = True
    if runtime.sweeper:
        runtime.sweeper.cancel()
    _outlive_parent()
    for uid in list(runtime.wakers):
        runtime.wake(uid)  # each converger sees `finishing` and ends
    runtime.finisher = asyncio.create_task(_exit_when_done(runtime))
    log.info(
        "%s the run that started this operator has ended; finishing its deletions, then exiting "
        "(at most %ss)",
        TAKEN,
        runtime.settings.timing.finish_seconds,
    )


def _outlive_parent() -> None:
    """Undo PR_SET_PDEATHSIG: the parent is about to exit, and this process has work left."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, 0)


def deleting(runtime: Runtime) -> int:
    """How many TestEnvironments of the served namespaces (all, when it serves the cluster) are
    being deleted."""
    namespaces = runtime.settings.tenants.namespaces or ("",)
    return sum(kubeio.environments_deleting(runtime.api, namespace) for namespace in namespaces)


async def _exit_when_done(runtime: Runtime) -> None:
    deadline = time.monotonic() + runtime.settings.timing.finish_seconds
    failing_since: float | None = None
    while True:
        now = time.monotonic()
        try:
            left = await runtime.in_thread(deleting, runtime)
        except Exception as exc:  # refused, or the API server is away: keep trying, for a while
            failing_since = failing_since or now
            if now - failing_since >= UNREACHABLE_SECONDS or now >= deadline:
                log.warning(
                    "finishing: the API server has not answered for %.0fs (%s): exiting; the next "
                    "operator for these namespaces (or `testenv sweep`) finishes what is left",
                    now - failing_since,
                    exc,
                )
                break
        else:
            failing_since = None
            if left == 0:
                log.info("finishing: nothing is being deleted any more: exiting")
                break
            if now >= deadline:
                log.warning(
                    "finishing: %s environment(s) still being deleted after %ss: exiting anyway; the "
                    "next operator for these namespaces (or `testenv sweep`) takes them over",
                    left,
                    runtime.settings.timing.finish_seconds,
                )
                break
        await asyncio.sleep(CHECK_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)  # kopf's own clean stop
