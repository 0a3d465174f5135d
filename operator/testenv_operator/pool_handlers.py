"""kopf handlers of TestEnvironmentPools: one filler per pool, and its tear-down.

- the filler (a kopf daemon, looping as `converger` says) is the only thing that makes a pool's
  workers: it wakes on the pool's own spec changes, on its workers' Deployments and namespaces
  (they carry the pool's owner label), and when a claim took some (the claiming pass wakes it);
- deletion: the finalizer deletes the free workers and waits until they are gone; claimed ones
  are their claimers' and stay.

The claims themselves are the environments' passes (reconciler, pooling).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import kopf

from testenv_api import GROUP, POOL_PLURAL, VERSION
from testenv_operator import kubeio
from testenv_operator.converger import Result, Resync, keep
from testenv_operator.pooling import PoolOutcome
from testenv_operator.runtime import Runtime

#: A pool still filling passes again this often even without events (a safety net: the Deployment
#: events of its workers wake it as they turn ready).
FILLING_SECONDS = 5.0


def _fill(runtime: Runtime, body: Mapping[str, Any], full: bool) -> PoolOutcome:
    outcome = runtime.pools.fill(body, full)
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
    lock = memo.setdefault("lock", asyncio.Lock())
    every = runtime.settings.timing.resync_seconds
    resync = Resync(every)

    async def one_pass(snapshot: Mapping[str, Any]) -> Result:
        full = resync.due()
        depth = "resync" if full else "fill"
        outcome = await runtime.run_pass(lock, _fill, runtime, snapshot, full, kind="pool", depth=depth)
        if full:
            resync.done()
        return Result(every if outcome.status.get("phase") == "Ready" else FILLING_SECONDS)

    meta = body["metadata"]
    await keep(runtime, body, stopped, one_pass, f"pool {meta['namespace']}/{meta['name']}")


@kopf.on.event(GROUP, VERSION, POOL_PLURAL)
async def pool_changed(body: kopf.Body, event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """A new or changed spec, or the finalizer just added: wake the filler now. Every event tells
    the metrics the pool's phase and workers (or that it is gone)."""
    runtime: Runtime = memo.runtime
    runtime.metrics.saw_pool(body, deleted=event["type"] == "DELETED")
    meta = body["metadata"]
    observed = (body.get("status") or {}).get("observedGeneration")
    if not meta.get("deletionTimestamp") and observed != meta.get("generation"):
        runtime.wake(meta.get("uid"))


@kopf.on.delete(GROUP, VERSION, POOL_PLURAL)
async def drain_pool(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    async with memo.setdefault("lock", asyncio.Lock()):
        left = await runtime.in_thread(runtime.pools.tear_down, dict(body))
    if left:
        raise kopf.TemporaryError(f"waiting for {len(left)} free workers to go: {', '.join(left)}", delay=1)
    runtime.events.forget(body["metadata"]["uid"])
