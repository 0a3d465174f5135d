"""kopf's own writes, under the same mandate as ours.

kopf writes to the cluster by itself: it adds and removes our finalizer, keeps its progress and
diff-base annotations and posts core Events. Those requests leave through kopf's aiohttp client,
not through `kubeio`, so the mandate's check never saw them: in a CI run a leader that had just
stepped down still PATCHed a new environment while kopf was stopping. kopf offers no public hook
around its requests, so `guard` wraps the one function all of them pass through
(`kopf._cogs.clients.api.request`): a write first takes its place under the mandate (refused with
`NotActingError` once it is revoked, counted until it returns, so `Mandate.settle` waits for it
too); reads and watches go through untouched. The wrapped name is checked when the guard is put
in place, so a kopf that moved it stops the operator at start instead of leaving writes unguarded.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from testenv_operator.kubeio import Mandate

#: Where kopf sends every request from (kopf 1.45: `api.get`, `patch`, `post`, `delete` and
#: `stream` all call it by this module-level name).
MODULE = "kopf._cogs.clients.api"


class UnguardableError(RuntimeError):
    """The kopf in use no longer sends its requests through `MODULE.request`."""


def guard(mandate: Mandate) -> Callable[[], None]:
    """Send kopf's writes only while `mandate` is held. Returns what puts kopf back as it was."""
    module = importlib.import_module(MODULE)
    original = getattr(module, "request", None)
    if original is None or not inspect.iscoroutinefunction(original):
        raise UnguardableError(
            f"cannot guard kopf's writes: {MODULE}.request is gone or not a coroutine function in "
            "this kopf; install the kopf of operator/requirements.txt (1.45) or update "
            "testenv_operator.kopf_writes"
        )

    async def request(method: str, url: str, **kwargs: Any) -> Any:
        with mandate.request(method):
            return await original(method, url, **kwargs)

    request.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(module, "request", request)  # noqa: B010

    def undo() -> None:
        setattr(module, "request", original)  # noqa: B010

    return undo
