"""The loop every daemon of the operator runs, as controller-runtime runs Reconcile.

One daemon per object (a TestEnvironment, a TestEnvironmentPool) calls `keep` with its pass. The
loop runs the pass, then sleeps until an event wakes the object (`Runtime.wake`), the daemon is
stopped, or the pass's `Result.requeue_after` runs out; a pass that raised is tried again after a
backoff that doubles up to MAX_BACKOFF_SECONDS. Nothing is done before the object carries our
finalizer: what a pass makes, the finalizer's handler must be there to delete. No pass starts once
the process lost the Lease (`Runtime.mandate`); one under way has its writes refused from then on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from testenv_api import FINALIZER
from testenv_operator.runtime import Runtime

log = logging.getLogger("testenv_operator")

#: The longest a daemon waits after a pass that raised, before it tries again.
MAX_BACKOFF_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class Result:
    """What a pass tells the loop: when to pass again if no event comes first."""

    #: Seconds until the next pass; None: only an event wakes the object.
    requeue_after: float | None = None
    #: The object is done with (the pass deleted it): the daemon ends.
    done: bool = False


#: One pass over a snapshot of the object's body.
Pass = Callable[[Mapping[str, Any]], Awaitable[Result]]


@dataclasses.dataclass
class Resync:
    """When a daemon's next full pass (one that lists every kind, to find drift) is due: `every`
    seconds after the last full pass that succeeded; the first pass is one."""

    every: float
    last: float = float("-inf")

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every

    def done(self) -> None:
        self.last = time.monotonic()


def backoff(failures: int) -> float:
    """Seconds before the next try after `failures` passes in a row raised: 2, 4, 8, ... 30."""
    return min(MAX_BACKOFF_SECONDS, 2.0**failures)


async def keep(
    runtime: Runtime, body: Mapping[str, Any], stopped: kopf.DaemonStopped, one_pass: Pass, what: str
) -> None:
    """Run `one_pass` for `body` (kopf keeps it current) until the daemon is stopped (kopf's
    DaemonStopped), the pass says it is done, or the process is finishing (SIGUSR1: a later run's
    operator converges). `what` names the object in the log."""
    uid = body["metadata"]["uid"]
    waker = runtime.wakers.setdefault(uid, asyncio.Event())
    failures = 0
    try:
        while not stopped and not runtime.finishing:
            if not runtime.mandate.held:
                # This process lost the Lease: kopf is being stopped, and no pass may start meanwhile.
                await stopped.wait()
                return
            waker.clear()  # before the pass: an event arriving during it must wake the next one
            snapshot = dict(body)
            timeout: float | None = None
            # Adding the finalizer is an event: it wakes this loop.
            if FINALIZER in (snapshot["metadata"].get("finalizers") or []):
                try:
                    # Shielded: kopf cancels a daemon that outlives its cancellation timeout, but a
                    # pass's thread cannot be cancelled; its lock must stay held until it ends, or
                    # a tear-down could list namespaces while the pass still creates one.
                    result = await asyncio.shield(asyncio.ensure_future(one_pass(snapshot)))
                except Exception as exc:  # the API server refused or went away: again, later each time
                    failures += 1
                    timeout = backoff(failures)
                    log.warning("a pass of %s failed: %s; next try in %.0fs", what, exc, timeout)
                else:
                    if result.done:
                        return
                    failures, timeout = 0, result.requeue_after
            await _sleep(waker, stopped, timeout)
    finally:
        runtime.wakers.pop(uid, None)


async def _sleep(waker: asyncio.Event, stopped: kopf.DaemonStopped, timeout: float | None) -> None:
    """Until `waker` is set, the daemon is stopped, or `timeout` passes."""
    waiters = [asyncio.ensure_future(waker.wait()), asyncio.ensure_future(stopped.wait())]
    await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
