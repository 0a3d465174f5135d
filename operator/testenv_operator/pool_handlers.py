"""kopf handlers of TestEnvironmentPools: one filler per pool, and its tear-down.

- the filler (a kopf daemon) is the only thing that makes a pool's workers: it wakes on the pool's
  own spec changes, on its workers' Deployments and namespaces (they carry the pool's owner label),
  and when a claim took some (the claiming pass wakes it);
- deletion: the finalizer deletes the free workers and waits until they are gone; claimed ones
  are their claimers' and stay.

The claims themselves are the environments' passes (reconciler, pooling).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from testenv_api import FINALIZER, GROUP, POOL_PLURAL, VERSION
from testenv_operator import kubeio
from testenv_operator.pooling import PoolOutcome
from testenv_operator.runtime import Runtime

log = logging.getLogger("testenv_operator")
#: A pool still filling passes again this often even without events (a safety net: the Deployment
#: events of its workers wake it as they turn ready).
FILLING_SECONDS = 5.0
#: The longest a filler waits after a pass that raised, before it tries again.
MAX_BACKOFF_SECONDS = 30.0


def _fill(runtime: Runtime, body: Mapping[str, Any], full: bool) -> PoolOutcome:
    outcome = runtime.reconciler.pools.fill(body, full)
    meta = body["metadata"]
    if outcome.status != body.get("status"):
        kubeio.patch_pool_status(runtime.api, meta["namespace"], meta["name"], outcome.status)
    events = runtime.events
    events.problem(body, "PoolCannotFill" if outcome.problems else None, outcome.status["message"])
    if outcome.created:
        events.action(body, "Filling", f"made {len(outcome.created)} workers: {', '.join(outcome.created)}")
    if outcome.removed:
        events.action(body, "ScaledDown", f"deleting {', '.join(outcome.removed)}")
    return outcome


@kopf.daemon(GROUP, VERSION, POOL_PLURAL, cancellation_timeout=5.0)
async def keep_filled(stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The pool's one filler, from its creation (or the operator's start) to its deletion."""
    runtime: Runtime = memo.runtime
    uid, namespace, name = (body["metadata"][key] for key in ("uid", "namespace", "name"))
    waker = runtime.wakers.setdefault(uid, asyncio.Event())
    lock = memo.setdefault("lock", asyncio.Lock())
    last_full, failures = 0.0, 0
    try:
        while not stopped and not runtime.finishing:
            waker.clear()
            snapshot = dict(body)
            timeout: float | None = None
            # As for environments: nothing is made before the finalizer that deletes it is on.
            if FINALIZER in (snapshot["metadata"].get("finalizers") or []):
                full = time.monotonic() - last_full >= runtime.settings.resync_seconds
                try:
                    outcome = await asyncio.shield(
                        asyncio.ensure_future(_locked_fill(runtime, lock, snapshot, full))
                    )
                except Exception as exc:
                    failures += 1
                    timeout = min(MAX_BACKOFF_SECONDS, 2.0**failures)
                    log.warning(
                        "a pass of pool %s/%s failed: %s; next try in %.0fs", namespace, name, exc, timeout
                    )
                else:
                    failures = 0
                    if full:
                        last_full = time.monotonic()
                    ready = outcome.status.get("phase") == "Ready"
                    timeout = runtime.settings.resync_seconds if ready else FILLING_SECONDS
            await runtime.sleep(waker, stopped, timeout)
    finally:
        runtime.wakers.pop(uid, None)


async def _locked_fill(
    runtime: Runtime, lock: asyncio.Lock, body: Mapping[str, Any], full: bool
) -> PoolOutcome:
    async with lock, runtime.passes:
        return await runtime.in_thread(_fill, runtime, body, full)


@kopf.on.event(GROUP, VERSION, POOL_PLURAL)
async def pool_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A new or changed spec, or the finalizer just added: wake the filler now."""
    meta = body["metadata"]
    observed = (body.get("status") or {}).get("observedGeneration")
    if not meta.get("deletionTimestamp") and observed != meta.get("generation"):
        memo.runtime.wake(meta.get("uid"))


@kopf.on.delete(GROUP, VERSION, POOL_PLURAL)
async def drain_pool(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    async with memo.setdefault("lock", asyncio.Lock()):
        left = await runtime.in_thread(runtime.reconciler.pools.tear_down, dict(body))
    if left:
        raise kopf.TemporaryError(f"waiting for {len(left)} free workers to go: {', '.join(left)}", delay=1)
    runtime.events.forget(body["metadata"]["uid"])
