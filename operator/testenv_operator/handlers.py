"""kopf handlers: the thin layer between cluster events and the reconciler.

- one converger per environment (a kopf daemon) is the only thing that applies: its first pass
  applies every worker, later ones apply every worker when `metadata.generation` moved past
  `status.observedGeneration` (the spec changed) and otherwise repair what is missing; how long it
  sleeps between passes follows what can change (`pacing`);
- events of the environment itself, and changes of the Deployments and Namespaces it owns, only
  wake it; those two kinds are the operator's own watches (`watches`), not kopf's, which stalls
  at a shared cluster's thousands of them;
- an in-memory index of every namespace's environments, kept by kopf from its one watch, for the
  per-namespace limits: no pass lists TestEnvironments;
- deletion: a finalizer deletes the owned namespaces and waits until they are gone;
- a background sweep deletes managed namespaces whose owner no longer exists;
- the metrics (`metrics`): every event of an environment tells them its phase, and each
  environment's first Ready the time it took.

What the handlers share is a `Runtime` in kopf's memo, made by `configure` from the settings
`__main__` read and put there; what one environment's handlers share (the lock that keeps a pass
and the tear-down apart) is in that object's own memo. The daemons' loop is `converger`'s.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from testenv_api import FINALIZER, GROUP, LABEL_OWNER_UID, PLURAL, POOL_PLURAL, VERSION, Phase
from testenv_operator import finishing, kubeio
from testenv_operator.converger import Result, Resync, keep
from testenv_operator.diffbase import DigestDiffBaseStorage
from testenv_operator.election import Terms
from testenv_operator.metrics import Metrics
from testenv_operator.orphans import sweep_orphans
from testenv_operator.pacing import ready_interval, seconds_to_next_pass
from testenv_operator.reconciler import Depth, Outcome, PassInput, expiry_reason, seconds_to_expiry
from testenv_operator.runtime import THREADS, Runtime
from testenv_operator.settings import Settings
from testenv_operator.validation import Sibling
from testenv_operator.watches import DEPLOYMENTS, Changed, Key, OwnedWatches

log = logging.getLogger("testenv_operator")

#: How long kopf gathers one object's events before handling them (its default is 0.1 s).
BATCH_WINDOW_SECONDS = 0.01
#: A routine pass with nothing to read (the watches' first lists are not in) looks again after
#: this long, if the lists coming in have not woken it first.
UNSYNCED_RETRY_SECONDS = 5.0


class _QuietWakeups(logging.Filter):
    """Drop the per-event success lines of the wake-up handlers: one per watched event."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith("Handler '") and "_changed' succeeded." in text)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """kopf's settings, and the Runtime, from ours: `__main__` read them (kopf run, without it: here)."""
    ours: Settings = memo.get("settings") or Settings.from_env()
    logging.getLogger().setLevel(ours.reporting.log_level)
    logging.getLogger("kopf.objects").addFilter(_QuietWakeups())
    settings.persistence.finalizer = FINALIZER
    # Our status schema is strict; keep kopf's own bookkeeping in annotations only.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = DigestDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    # Every call gets bounds (kopf's default is 5 minutes, and none to connect): a call to a dead
    # but open connection would otherwise wait that long. kopf's timeout is for the whole answer,
    # whole-cluster lists at start-up included, so it is longer than our per-read one.
    calls = Terms.of(ours.leadership.lease_seconds).calls
    settings.networking.connect_timeout = calls.connect
    settings.networking.request_timeout = max(30.0, 4 * calls.read)
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300  # past the server's own end of a watch, never before it
    # kopf holds each object's events this long to fold bursts into one; our event handlers only
    # wake a converger (cheap, idempotent), so the default 0.1 s was pure latency on every
    # readiness change: a Deployment turning ready reached the status 60-120 ms later.
    settings.batching.batch_window = BATCH_WINDOW_SECONDS
    # The Lease's keeper (`__main__`) revokes the mandate when leadership is lost: no write of the
    # Runtime's client leaves after that. Without leader election, it is never revoked.
    mandate: kubeio.Mandate = memo.get("mandate") or kubeio.Mandate()
    metrics: Metrics | None = memo.get("metrics")
    if metrics is None:  # kopf run: no `__main__` served them
        metrics = Metrics()
        memo.endpoint = metrics.serve(ours.reporting.metrics)
        metrics.leader.set(1)
    api = kubeio.connect(calls, THREADS, mandate, errors=metrics.api_error)
    runtime = Runtime.make(api, ours, mandate, metrics)
    settings.execution.executor = runtime.threads  # kopf's synchronous handlers (the index) too
    runtime.sweeper = asyncio.create_task(_sweep_orphans_forever(runtime))
    if not ours.tenants.namespaces:  # an operator serving some namespaces lists its workers'
        runtime.owned = OwnedWatches(
            api, asyncio.get_running_loop(), _owned_changed(runtime), lambda: _wake_all(runtime)
        )
        runtime.owned.start()
    memo.runtime = runtime
    finishing.listen(runtime)
    log.info("settings: %s", ours)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    for task in (runtime.sweeper, runtime.finisher):
        if task:
            task.cancel()
    if runtime.owned:
        runtime.owned.stop()
    if endpoint := memo.get("endpoint"):
        endpoint.close()


@kopf.on.probe(id="environments")
def count_environments(memo: kopf.Memo, **_: Any) -> int:
    return len(memo.runtime.wakers)


#: A namespace's environments as `environments` indexes them: (created, name, workers).
Indexed = tuple[str, str, int]


@kopf.index(GROUP, VERSION, PLURAL, when=lambda meta, **_: not meta.get("deletionTimestamp"))
def environments(
    namespace: str | None, name: str, meta: kopf.Meta, spec: kopf.Spec, **_: Any
) -> dict[str, Indexed]:
    """Environments by namespace, from kopf's watch: what the per-namespace limits count.

    Environments being deleted are left out, as they no longer hold a place.
    """
    return {namespace or "": (str(meta.get("creationTimestamp")), name, int(spec.get("workers", 1)))}


@kopf.index(GROUP, VERSION, POOL_PLURAL, when=lambda meta, **_: not meta.get("deletionTimestamp"))
def environment_pools(
    namespace: str | None, name: str, meta: kopf.Meta, spec: kopf.Spec, **_: Any
) -> dict[str, dict[str, Any]]:
    """TestEnvironmentPools by namespace, from kopf's watch: what a new environment may claim from."""
    copied = json.loads(json.dumps(dict(spec)))
    return {
        namespace or "": {
            "metadata": {"namespace": namespace, "name": name, "uid": meta["uid"]},
            "spec": copied,
        }
    }


def _pools(handler_kwargs: Mapping[str, Any], namespace: str) -> list[dict[str, Any]]:
    index: kopf.Index[str, dict[str, Any]] = handler_kwargs["environment_pools"]
    return sorted(index.get(namespace, ()), key=lambda p: p["metadata"]["name"])


def _owned_changed(runtime: Runtime) -> Changed:
    """Wake the owner of a namespace or Deployment that changed; for a Deployment of a claimed pool
    worker (it carries the pool's owner label), its claimer too."""

    def changed(kind: str, uid: str, key: Key) -> None:
        runtime.wake(uid)
        if kind == DEPLOYMENTS.name and isinstance(key, tuple):
            runtime.wake(runtime.claimers.get(key[0]))

    return changed


def _wake_all(runtime: Runtime) -> None:
    """The watches' first lists are in: every converger waiting for them passes now."""
    for uid in list(runtime.wakers):
        runtime.wake(uid)


def _siblings(handler_kwargs: Mapping[str, Any], namespace: str) -> list[Sibling]:
    """The namespace's environments, oldest first (ties by name, as the API server lists them)."""
    index: kopf.Index[str, Indexed] = handler_kwargs["environments"]  # kopf passes indices by name
    found = sorted(index[namespace]) if namespace in index else []
    return [Sibling(name, workers) for _, name, workers in found]


def spec_unhandled(body: Mapping[str, Any]) -> bool:
    """True until a status describes the current spec (a new environment, or a changed spec)."""
    observed = (body.get("status") or {}).get("observedGeneration")
    return observed is None or observed != body["metadata"].get("generation")


# -- one pass: converge, write the status, tell the story ---------------------------------------


def _report(runtime: Runtime, body: Mapping[str, Any], outcome: Outcome, before: Mapping[str, Any]) -> None:
    """Kubernetes Events for what changed, so `kubectl describe te` tells the story."""
    events, uid, status = runtime.events, body["metadata"]["uid"], outcome.status
    reason = status["conditions"][-1]["reason"] if outcome.problems else None
    events.problem(body, reason, status.get("message", ""))
    if outcome.claimed:
        events.action(body, "Claimed", f"claimed ready pooled workers {outcome.claimed}")
    if outcome.created:
        events.action(body, "Provisioning", f"created the namespaces of workers {outcome.created}")
    if outcome.repaired:
        events.action(body, "Repaired", f"re-applied missing objects of workers {outcome.repaired}")
    if outcome.removed_namespaces:
        events.action(body, "ScaledDown", f"deleting {', '.join(outcome.removed_namespaces)}")
    conflicts = {f"conflict:{ns}" for ns in outcome.foreign}
    for topic in sorted(conflicts):
        events.statement(body, topic, "NamespaceConflict", status["message"], warning=True)
    events.clear(uid, *(t for t in events.topics(uid) if t.startswith("conflict:") and t not in conflicts))
    phase = status.get("phase")
    if phase != before.get("phase") and phase in (Phase.READY, Phase.DEGRADED):
        events.action(body, str(phase), status.get("message", ""))


def _converge(runtime: Runtime, given: PassInput) -> Outcome:
    body, meta = given.body, given.body["metadata"]
    before = dict(body.get("status") or {})
    outcome = runtime.reconciler.converge(given)
    for pooled in outcome.pooled_namespaces:
        runtime.claimers[pooled] = meta["uid"]
    if outcome.over_limit:
        runtime.waiting_for_room[meta["uid"]] = meta["namespace"]
    else:
        runtime.waiting_for_room.pop(meta["uid"], None)
    if outcome.status != body.get("status"):
        kubeio.patch_environment_status(runtime.api, meta["namespace"], meta["name"], outcome.status)
    _report(runtime, body, outcome, before)
    return outcome


# -- the environment's lifecycle ----------------------------------------------------------------


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=5.0)
async def keep_converged(
    stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo, **kwargs: Any
) -> None:
    """The environment's one converger, from its creation (or the operator's start) to its deletion."""
    runtime: Runtime = memo.runtime
    meta = body["metadata"]
    environment = _Environment(runtime, memo.setdefault("lock", asyncio.Lock()), kwargs)
    try:
        await keep(runtime, body, stopped, environment.one_pass, f"{meta['namespace']}/{meta['name']}")
    finally:
        runtime.waiting_for_room.pop(meta["uid"], None)


class _Environment:
    """One environment's passes, and what they carry from one to the next."""

    def __init__(self, runtime: Runtime, lock: asyncio.Lock, handler_kwargs: Mapping[str, Any]) -> None:
        self.runtime, self.lock, self.indices = runtime, lock, handler_kwargs
        self.resync = Resync(runtime.settings.timing.resync_seconds)
        #: The first pass applies everything: the operator may be new, the spec too.
        self.apply_all = True
        #: Whether a pass of this converger found it Ready yet (its first Ready is measured).
        self.was_ready = False

    async def one_pass(self, body: Mapping[str, Any]) -> Result:
        runtime = self.runtime
        if reason := expiry_reason(body):
            await runtime.in_thread(_expire, runtime, body, reason)
            return Result(done=True)
        unhandled = spec_unhandled(body)
        self.apply_all = self.apply_all or unhandled
        # Someone waits on a new spec or a provisioning environment: its pass goes before the
        # routine ones, and lists (or applies) whenever it needs to. A routine pass that would
        # list (its resync is due, or a restarted operator's first apply of an environment it
        # finds Ready) spends the operator's budget of full passes, and reads the watches while
        # that is spent; an operator serving some namespaces lists every pass anyway (REPAIR).
        phase = (body.get("status") or {}).get("phase")
        urgent = unhandled or phase not in (Phase.READY, Phase.DEGRADED)
        listing = self.apply_all or self.resync.due()
        if listing and not urgent and not runtime.settings.tenants.namespaces:
            listing = runtime.resyncs.take()
        if not listing and runtime.owned and not runtime.owned.synced:
            # Nothing to read yet: the watches' first lists wake every converger when they are in.
            return Result(UNSYNCED_RETRY_SECONDS)
        given = self._input(body, listing)
        outcome = await runtime.run_pass(
            self.lock, _converge, runtime, given, kind="environment", depth=given.depth.value, urgent=urgent
        )
        if given.depth is Depth.APPLY:
            self.apply_all = False
        if given.depth in (Depth.APPLY, Depth.RESYNC):
            self.resync.done()
        if not self.was_ready and outcome.status.get("phase") == Phase.READY:
            # Once per converger: the status this pass wrote may reach `body` after the next
            # pass has started, which would find it "turning Ready" again.
            self.was_ready = True
            _measure_first_ready(runtime.metrics, body, outcome.status)
        for pool_uid in outcome.drained_pools:  # refill what this pass claimed
            runtime.wake(pool_uid)
        pushed = not runtime.settings.tenants.namespaces  # its watches see the workers' namespaces
        timing = runtime.settings.timing
        every: float = timing.resync_seconds
        if pushed:  # past what the resync budget covers, a Ready one passes when it may resync
            every = ready_interval(every, len(runtime.wakers), timing.resyncs_per_second)
        return Result(seconds_to_next_pass(outcome.status, every, seconds_to_expiry(body), pushed))

    def _input(self, body: Mapping[str, Any], listing: bool) -> PassInput:
        meta = body["metadata"]
        namespace = meta["namespace"]
        siblings, pools = _siblings(self.indices, namespace), _pools(self.indices, namespace)
        if listing:
            depth = Depth.APPLY if self.apply_all else Depth.RESYNC
            return PassInput(body, depth, siblings, pools)
        # Between full passes, readiness comes from the watches: no LIST per pass. An operator
        # serving some namespaces does not watch its workers' namespaces: it lists them.
        owned = self.runtime.owned
        if owned is None:
            return PassInput(body, Depth.REPAIR, siblings, pools)
        return PassInput(body, Depth.REPORT, siblings, pools, owned.observed(meta["uid"]))


def _measure_first_ready(metrics: Metrics, body: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    """The time from creation to Ready, if this is the environment's first Ready since it was
    created: it never was Ready or Degraded, and its spec never changed (generation 1; a later
    spec's Ready would be measured from the creation, not the change)."""
    before = (body.get("status") or {}).get("phase")
    if before in (Phase.READY, Phase.DEGRADED) or body["metadata"].get("generation", 1) != 1:
        return
    created = datetime.datetime.fromisoformat(body["metadata"]["creationTimestamp"])
    seconds = (datetime.datetime.now(datetime.UTC) - created).total_seconds()
    pooled = any(w.get("pool") for w in status.get("workers") or [])
    # The API server's clock stamped the creation, ours reads now: never below 0 on a skew.
    metrics.ready_seconds.labels(pooled=str(pooled).lower()).observe(max(0.0, seconds))


def _expire(runtime: Runtime, body: Mapping[str, Any], reason: str) -> None:
    meta = body["metadata"]
    runtime.events.action(body, "Expired", f"deleting this TestEnvironment: {reason}")
    kubeio.delete_environment(runtime.api, meta["namespace"], meta["name"])


@kopf.on.event(GROUP, VERSION, PLURAL)
async def environment_changed(body: kopf.Body, event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """A new or changed spec, or the finalizer just added: wake the converger now. Every event
    tells the metrics the environment's phase (or that it is gone)."""
    runtime: Runtime = memo.runtime
    runtime.metrics.saw_environment(body, deleted=event["type"] == "DELETED")
    meta = body["metadata"]
    if meta.get("deletionTimestamp") or not spec_unhandled(body):
        return
    runtime.wake(meta.get("uid"))
    if (body.get("status") or {}).get("observedGeneration") is not None:
        runtime.make_room(meta["namespace"])  # fewer workers may make room; a new one never does


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def tear_down(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    # A pass still applying could otherwise make a namespace after the list below, leaving it
    # behind once the finalizer is gone.
    async with memo.setdefault("lock", asyncio.Lock()):
        await runtime.in_thread(_tear_down, runtime, dict(body))
    runtime.events.forget(body["metadata"]["uid"])
    runtime.forget_claimer(body["metadata"]["uid"])
    runtime.make_room(body["metadata"]["namespace"])


def _tear_down(runtime: Runtime, body: Mapping[str, Any]) -> None:
    meta = body["metadata"]
    owned = kubeio.list_labelled(runtime.api, "Namespace", f"{LABEL_OWNER_UID}={meta['uid']}")
    if (body.get("status") or {}).get("phase") != Phase.TERMINATING:
        message = f"deleting {len(owned)} worker namespaces"
        status = {**(body.get("status") or {}), "phase": Phase.TERMINATING.value, "message": message}
        kubeio.patch_environment_status(runtime.api, meta["namespace"], meta["name"], status)
        runtime.events.action(body, "Deleting", message)
    for ns in owned:
        if not ns["metadata"].get("deletionTimestamp"):
            kubeio.delete(runtime.api, "Namespace", ns["metadata"]["name"])
        # Test services hold nothing worth a graceful stop, and pods still in their grace period
        # make the namespace controller back off for many seconds per namespace.
        kubeio.delete_pods_now(runtime.api, ns["metadata"]["name"])
    if owned:
        names = ", ".join(sorted(n["metadata"]["name"] for n in owned))
        raise kopf.TemporaryError(f"waiting for {len(owned)} namespaces to go: {names}", delay=1)


async def _sweep_orphans_forever(runtime: Runtime) -> None:
    while runtime.mandate.held:  # a process that stepped down sweeps no more
        try:
            await runtime.in_thread(sweep_orphans, runtime.api, runtime.settings.tenants.namespaces)
        except Exception:  # a failed sweep must not stop the next one
            log.exception("orphan sweep failed")
        await asyncio.sleep(runtime.settings.timing.sweep_seconds)
