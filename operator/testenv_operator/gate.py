"""How many passes run at once, which go first, and how often a full resync may list.

A shared cluster's operator holds hundreds of environments. When it starts, every one of them
wants a pass at once; an environment someone is waiting for (new, its spec changed, or still
provisioning) must not queue behind them. And at rest each environment's full resync lists every
kind it owns: left to each environment's own clock, that cost grows with the fleet, so full
resyncs share one budget per second and an environment that finds it spent reads readiness from
the watches (as between its full passes) and asks again at its next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable


class PassGate:
    """At most `places` passes at once; an urgent pass waiting goes before every routine one."""

    def __init__(self, places: int) -> None:
        self.free = places
        self.urgent_waiting = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def place(self, urgent: bool = False) -> AsyncIterator[None]:
        async with self._changed:
            self.urgent_waiting += urgent
            try:
                await self._changed.wait_for(lambda: self.free > 0 and (urgent or not self.urgent_waiting))
            finally:
                self.urgent_waiting -= urgent
            self.free -= 1
        try:
            yield
        finally:
            async with self._changed:
                self.free += 1
                self._changed.notify_all()


class ResyncBudget:
    """A token bucket: up to `per_second` full resyncs a second across the operator, with a burst
    of as many. `take` says whether this one may go now (it never waits)."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self.clock = clock
        self.tokens = per_second
        self.at = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.per_second, self.tokens + (now - self.at) * self.per_second)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
