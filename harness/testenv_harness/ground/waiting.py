"""The one way to wait: poll a check until it holds or a deadline passes.

Harness, tests and benchmarks all wait like this, so a timeout always says the same three things:
what was awaited, for how long, and what was seen last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeoutError(TimeoutError):
    """A wait ran out of time; `what`, `timeout` and `seen` are also in the message."""

    def __init__(self, what: str, timeout: float, seen: str) -> None:
        super().__init__(f"timed out after {timeout:.0f}s waiting for {what} (last seen: {seen})")
        self.what = what
        self.timeout = timeout
        self.seen = seen


def wait_for(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    seen: Callable[[], str] | None = None,
    retry: tuple[type[Exception], ...] = (),
) -> T:
    """The first truthy result of `check`, which runs at once and then every `interval` seconds.

    After `timeout` seconds (and one last check at the deadline) raises WaitTimeoutError, describing
    the state with `seen()` or else the last result, or the last exception of a `retry` type
    `check` raised. Any other exception from `check` ends the wait at once: it means "stop".
    """
    deadline = time.monotonic() + timeout
    last = "nothing"
    while True:
        began = time.monotonic()
        try:
            result = check()
        except retry as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if result:
                return result
            last = repr(result)
        now = time.monotonic()
        if now >= deadline:
            raise WaitTimeoutError(what, timeout, seen() if seen is not None else last)
        time.sleep(max(0.0, min(began + interval, deadline) - now))
