"""kopf handlers: the thin layer between cluster events and the reconciler.

- create/resume/spec change: apply every worker at once (`provision`).
- a daemon per environment keeps it converged: readiness, drift repair, expiry (`keep_converged`);
  how long it sleeps between passes follows what can change (`pacing`).
- an in-memory index of every namespace's environments, kept by kopf from its one watch, for the
  per-namespace limits: no pass lists TestEnvironments.
- Deployment and Namespace events of owned objects wake that daemon at once.
- deletion: a finalizer deletes the owned namespaces and waits until they are gone.
- a background sweep deletes managed namespaces whose owner no longer exists.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from testenv_api import (
    FINALIZER,
    GROUP,
    LABEL_MANAGED_BY,
    LABEL_OWNER_NAMESPACE,
    LABEL_OWNER_UID,
    MANAGED_BY,
    PLURAL,
    VERSION,
    Phase,
)
from testenv_operator import kubeio
from testenv_operator.diffbase import DigestDiffBaseStorage
from testenv_operator.pacing import seconds_to_next_pass
from testenv_operator.reconciler import Outcome, Reconciler, expiry_reason, seconds_to_expiry
from testenv_operator.settings import Settings
from testenv_operator.validation import Sibling

log = logging.getLogger("testenv_operator")


class _State:
    """Process-wide objects made once at start-up."""

    api: client.ApiClient
    settings: Settings
    reconciler: Reconciler
    wakers: dict[str, asyncio.Event]
    waiting_for_room: dict[str, str]  # uid -> namespace, of environments over a namespace limit
    locks: dict[str, asyncio.Lock]
    executor: ThreadPoolExecutor
    sweeper: asyncio.Task[None] | None = None


STATE = _State()
STATE.wakers = {}
STATE.waiting_for_room = {}
STATE.locks = {}


async def _in_thread(fn: Any, *args: Any) -> Any:
    """Run blocking client code on the operator's own pool (asyncio's default has 6 threads on 2 CPUs)."""
    # Copy the context as asyncio.to_thread does: kopf keeps its settings in context variables.
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return await asyncio.get_running_loop().run_in_executor(STATE.executor, call)


def _api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        return config.new_client_from_config()


class _QuietWakeups(logging.Filter):
    """Drop the per-event success lines of the wake-up handlers: one per Deployment change."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith("Handler 'owned_") and text.endswith("succeeded."))


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    STATE.settings = Settings.from_env()
    logging.getLogger().setLevel(STATE.settings.log_level)
    logging.getLogger("kopf.objects").addFilter(_QuietWakeups())
    settings.persistence.finalizer = FINALIZER
    # Our status schema is strict; keep kopf's own bookkeeping in annotations only.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = DigestDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 270
    settings.execution.max_workers = 16
    STATE.api = _api_client()
    STATE.reconciler = Reconciler(STATE.api, STATE.settings, ThreadPoolExecutor(max_workers=16))
    STATE.executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="converge")
    STATE.sweeper = asyncio.create_task(_sweep_orphans_forever())
    log.info("settings: %s", STATE.settings)


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    if STATE.sweeper:
        STATE.sweeper.cancel()


@kopf.on.probe(id="environments")
def count_environments(**_: Any) -> int:
    return len(STATE.wakers)


# -- status and events ---------------------------------------------------------------------------


def _write_status(body: Mapping[str, Any], status: dict[str, Any]) -> None:
    if status == body.get("status"):
        return
    meta = body["metadata"]
    try:
        client.CustomObjectsApi(STATE.api).patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            meta["namespace"],
            PLURAL,
            meta["name"],
            {"status": status},
            _content_type="application/merge-patch+json",
            _preload_content=False,
        )
    except ApiException as exc:
        if exc.status != 404:  # deleted meanwhile: nothing to report on
            raise


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


def _siblings(handler_kwargs: Mapping[str, Any], namespace: str) -> list[Sibling]:
    """The namespace's environments, oldest first (ties by name, as the API server lists them)."""
    index: kopf.Index[str, Indexed] = handler_kwargs["environments"]  # kopf passes indices by name
    found = sorted(index[namespace]) if namespace in index else []
    return [Sibling(name, workers) for _, name, workers in found]


def _event(body: Mapping[str, Any], reason: str, message: str, warning: bool = False) -> None:
    """Post a Kubernetes Event on the TestEnvironment (kopf only reads its metadata)."""
    post = kopf.warn if warning else kopf.info
    post(cast(kopf.Body, body), reason=reason, message=message)


def _report(body: Mapping[str, Any], outcome: Outcome, before: Mapping[str, Any]) -> None:
    """Kubernetes Events for what changed, so `kubectl describe te` tells the story."""
    if outcome.problems and before.get("message") != outcome.status.get("message"):
        _event(
            body,
            warning=True,
            reason=outcome.status["conditions"][-1]["reason"],
            message=outcome.status["message"],
        )
    if outcome.created:
        _event(body, reason="Provisioning", message=f"created the namespaces of workers {outcome.created}")
    if outcome.repaired:
        _event(body, reason="Repaired", message=f"re-applied missing objects of workers {outcome.repaired}")
    if outcome.removed_namespaces:
        _event(body, reason="ScaledDown", message=f"deleting {', '.join(outcome.removed_namespaces)}")
    for ns in outcome.foreign:
        if ns not in str(before.get("message", "")):
            _event(body, warning=True, reason="NamespaceConflict", message=outcome.status["message"])
    phase = outcome.status.get("phase")
    if phase != before.get("phase") and phase in (Phase.READY, Phase.DEGRADED):
        _event(body, reason=str(phase), message=outcome.status.get("message", ""))


def _converge(body: Mapping[str, Any], apply_all: bool, full: bool, siblings: list[Sibling]) -> Outcome:
    before = dict(body.get("status") or {})
    outcome = STATE.reconciler.converge(body, apply_all=apply_all, full=full, siblings=siblings)
    meta = body["metadata"]
    if outcome.over_limit:
        STATE.waiting_for_room[meta["uid"]] = meta["namespace"]
    else:
        STATE.waiting_for_room.pop(meta["uid"], None)
    _write_status(body, outcome.status)
    _report(body, outcome, before)
    return outcome


# -- the environment's lifecycle ----------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def provision(body: kopf.Body, **kwargs: Any) -> None:
    uid, namespace = body["metadata"]["uid"], body["metadata"]["namespace"]
    async with STATE.locks.setdefault(uid, asyncio.Lock()):  # never apply alongside the daemon
        await _in_thread(_converge, dict(body), True, True, _siblings(kwargs, namespace))
    _wake(uid)  # its daemon takes over now, whatever it was waiting for
    if kwargs.get("reason") == "update":  # fewer workers may make room; a new one never does
        _make_room(namespace)


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=5.0)
async def keep_converged(stopped: kopf.DaemonStopped, body: kopf.Body, **kwargs: Any) -> None:
    uid, namespace = body["metadata"]["uid"], body["metadata"]["namespace"]
    waker = STATE.wakers.setdefault(uid, asyncio.Event())
    lock = STATE.locks.setdefault(uid, asyncio.Lock())
    last_full = 0.0
    try:
        while not stopped:
            snapshot = dict(body)
            reason = expiry_reason(snapshot)
            # Only once our finalizer is on: deleting earlier would skip tear_down, and a namespace
            # the create handler is making right now would be left behind.
            if reason and FINALIZER in (snapshot["metadata"].get("finalizers") or []):
                await _in_thread(_expire, snapshot, reason)
                return
            # Namespaces and Deployments are checked every pass; the other kinds every resync.
            full = time.monotonic() - last_full >= STATE.settings.resync_seconds
            waker.clear()  # before the pass: an event arriving during it must wake the next one
            async with lock:
                outcome = await _in_thread(_converge, snapshot, False, full, _siblings(kwargs, namespace))
            if full:
                last_full = time.monotonic()
            timeout = seconds_to_next_pass(
                outcome.status, STATE.settings.resync_seconds, seconds_to_expiry(snapshot)
            )
            waiters = [asyncio.ensure_future(waker.wait()), asyncio.ensure_future(stopped.wait())]
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
    finally:
        STATE.wakers.pop(uid, None)  # the lock stays: tear_down must wait for a converge in flight
        STATE.waiting_for_room.pop(uid, None)


def _expire(body: Mapping[str, Any], reason: str) -> None:
    meta = body["metadata"]
    _event(body, reason="Expired", message=f"deleting this TestEnvironment: {reason}")
    try:
        client.CustomObjectsApi(STATE.api).delete_namespaced_custom_object(
            GROUP, VERSION, meta["namespace"], PLURAL, meta["name"]
        )
    except ApiException as exc:
        if exc.status != 404:
            raise


def _wake(uid: str | None) -> None:
    waker = STATE.wakers.get(uid or "")
    if waker:
        waker.set()


def _make_room(namespace: str) -> None:
    """Wake the environments of `namespace` that wait for room under its limits."""
    for uid, home in list(STATE.waiting_for_room.items()):
        if home == namespace:
            _wake(uid)


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_OWNER_UID: kopf.PRESENT})
async def owned_deployment_changed(labels: Mapping[str, str], **_: Any) -> None:
    _wake(labels.get(LABEL_OWNER_UID))


@kopf.on.event("", "v1", "namespaces", labels={LABEL_OWNER_UID: kopf.PRESENT})
async def owned_namespace_changed(labels: Mapping[str, str], **_: Any) -> None:
    _wake(labels.get(LABEL_OWNER_UID))


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def tear_down(body: kopf.Body, **_: Any) -> None:
    uid = body["metadata"]["uid"]
    # A converge still applying (create handler, daemon) could otherwise make a namespace after
    # the list below, leaving it behind once the finalizer is gone.
    async with STATE.locks.setdefault(uid, asyncio.Lock()):
        await _in_thread(_tear_down, dict(body))
    STATE.locks.pop(uid, None)
    _make_room(body["metadata"]["namespace"])


def _tear_down(body: Mapping[str, Any]) -> None:
    uid = body["metadata"]["uid"]
    owned = kubeio.list_labelled(STATE.api, "Namespace", f"{LABEL_OWNER_UID}={uid}")
    if (body.get("status") or {}).get("phase") != Phase.TERMINATING:
        _write_status(
            body,
            {
                **(body.get("status") or {}),
                "phase": Phase.TERMINATING.value,
                "message": f"deleting {len(owned)} worker namespaces",
            },
        )
        _event(body, reason="Deleting", message=f"deleting {len(owned)} worker namespaces")
    for ns in owned:
        if not ns["metadata"].get("deletionTimestamp"):
            kubeio.delete(STATE.api, "Namespace", ns["metadata"]["name"])
        # Test services hold nothing worth a graceful stop, and pods still in their grace period
        # make the namespace controller back off for many seconds per namespace.
        kubeio.delete_pods_now(STATE.api, ns["metadata"]["name"])
    if owned:
        names = ", ".join(sorted(n["metadata"]["name"] for n in owned))
        raise kopf.TemporaryError(f"waiting for {len(owned)} namespaces to go: {names}", delay=1)


# -- orphans ------------------------------------------------------------------------------------


def sweep_orphans(api: client.ApiClient, watched: tuple[str, ...] = ()) -> list[str]:
    """Delete managed namespaces whose owning TestEnvironment (by UID) no longer exists.

    With `watched` namespaces, only namespaces owned from those are judged: another operator
    (or release) serves the rest, and this one may not even be allowed to read their owners.
    """
    objects = client.CustomObjectsApi(api)
    removed = []
    owners: dict[str, set[str] | None] = {}  # owner namespace -> UIDs of its environments
    for ns in kubeio.list_labelled(api, "Namespace", f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_OWNER_UID}"):
        meta = ns["metadata"]
        labels = meta.get("labels") or {}
        owner_namespace = labels.get(LABEL_OWNER_NAMESPACE, "")
        if meta.get("deletionTimestamp") or (watched and owner_namespace not in watched):
            continue
        if owner_namespace not in owners:
            # By UID, never by the name label: a label may be a truncated name.
            try:
                listed = objects.list_namespaced_custom_object(GROUP, VERSION, owner_namespace, PLURAL)
                owners[owner_namespace] = {te["metadata"]["uid"] for te in listed.get("items") or []}
            except ApiException as exc:
                if exc.status != 403:
                    raise
                owners[owner_namespace] = None  # not ours to judge
        uids = owners[owner_namespace]
        if uids is None:
            continue
        if labels[LABEL_OWNER_UID] not in uids:
            kubeio.delete(api, "Namespace", meta["name"])
            removed.append(meta["name"])
    if removed:
        log.info("deleted orphaned namespaces: %s", ", ".join(removed))
    return removed


async def _sweep_orphans_forever() -> None:
    while True:
        try:
            await _in_thread(sweep_orphans, STATE.api, STATE.settings.namespaces)
        except Exception:  # a failed sweep must not stop the next one
            log.exception("orphan sweep failed")
        await asyncio.sleep(STATE.settings.sweep_seconds)
