"""The operator's own watches of what environments and pools own: their namespaces and
Deployments, indexed by owner UID, each change waking the owner.

kopf kept these (a `kopf.index` and an event handler per kind) until a shared cluster's scale
showed its cost: kopf holds every handler until each indexed object has been indexed, through one
toggle per object in a set whose every change wakes every waiting toggle, so the wait grows with
the square of the objects. A restarted operator holding 500 environments of 4 workers (8,000
owned objects) served nothing for 943 s. Here one thread per kind lists (in pages), then watches
from the list's resourceVersion, and lists again when that version has expired (410). What it
reads goes to the event loop, the only place the index changes, which wakes the owners whose
objects changed (only those: a status write that leaves readiness as it was wakes nobody).

Until both kinds' first lists are in, `synced` is False: a pass must list what it reads, or wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from kubernetes import client

from testenv_api import LABEL_OWNER_UID
from testenv_operator import kubeio, readiness
from testenv_operator.readiness import Observed

log = logging.getLogger("testenv_operator")

#: Objects a list page carries: enough to keep pages few, small enough that no answer is huge.
PAGE = 500
#: How long one watch lasts before the API server ends it (and this watch starts the next).
WATCH_SECONDS = 270
#: The least time between the starts of two watches of one kind.
MIN_WATCH_SECONDS = 1.0
#: The longest wait before trying again after a list or a watch failed.
MAX_RETRY_SECONDS = 30.0

#: A namespace's name, or a Deployment's (namespace, name).
Key = str | tuple[str, str]
#: What an index keeps of one object: its owner's UID, its key, and the value read from it.
Entry = tuple[str, Key, Any]
#: Told of every change: the kind, the owner whose entries changed, the changed object's key.
Changed = Callable[[str, str, Key], None]


@dataclasses.dataclass(frozen=True)
class Kind:
    """One watched kind (a `kubeio.KINDS` name) and what an index keeps of each of its objects."""

    name: str
    entry: Callable[[kubeio.Obj], tuple[Key, Any]]


def _deployment(obj: kubeio.Obj) -> tuple[Key, Any]:
    meta = obj["metadata"]
    return (meta["namespace"], meta["name"]), readiness.deployment_ready(obj)


def _namespace(obj: kubeio.Obj) -> tuple[Key, Any]:
    meta = obj["metadata"]
    return meta["name"], bool(meta.get("deletionTimestamp"))


DEPLOYMENTS = Kind("Deployment", _deployment)
NAMESPACES = Kind("Namespace", _namespace)


def entry(kind: Kind, obj: kubeio.Obj) -> Entry | None:
    """The index entry of an object, or None if it names no owner."""
    uid = _owner(obj)
    if not uid:
        return None
    key, value = kind.entry(obj)
    return uid, key, value


def _owner(obj: kubeio.Obj) -> str | None:
    owner: str | None = (obj["metadata"].get("labels") or {}).get(LABEL_OWNER_UID)
    return owner


class OwnedIndex:
    """One kind's objects by owner UID (uid -> {key: value}), and each key's owner, so an object
    relabelled to another owner (a claimed pool worker) moves. Every change returns what it
    changed, as (uid, key) pairs: a put that changes nothing returns none."""

    def __init__(self) -> None:
        self._owned: dict[str, dict[Key, Any]] = {}
        self._owner: dict[Key, str] = {}

    def __len__(self) -> int:
        return len(self._owner)

    def of(self, uid: str) -> dict[Key, Any]:
        return dict(self._owned.get(uid, {}))

    def put(self, uid: str, key: Key, value: Any) -> list[tuple[str, Key]]:
        changed = self.drop(key) if self._owner.get(key, uid) != uid else []
        entries = self._owned.setdefault(uid, {})
        if key in entries and entries[key] == value:
            return changed
        entries[key] = value
        self._owner[key] = uid
        return [*changed, (uid, key)]

    def drop(self, key: Key) -> list[tuple[str, Key]]:
        uid = self._owner.pop(key, None)
        if uid is None:
            return []
        entries = self._owned[uid]
        del entries[key]
        if not entries:
            del self._owned[uid]
        return [(uid, key)]

    def replace(self, found: Iterable[Entry]) -> list[tuple[str, Key]]:
        """Everything a new list found, in place of what was kept."""
        found = list(found)
        listed = {key for _, key, _ in found}
        changed = [pair for key in list(self._owner) if key not in listed for pair in self.drop(key)]
        for uid, key, value in found:
            changed += self.put(uid, key, value)
        return changed


class OwnedWatches:
    """The owned namespaces and Deployments of every environment and pool, kept current by one
    thread per kind; the index lives on `loop` and only changes there. `changed` is told (on the
    loop) of each change; `synced` (on the loop) once both kinds' first lists are in."""

    KINDS = (NAMESPACES, DEPLOYMENTS)

    def __init__(
        self,
        api: client.ApiClient,
        loop: asyncio.AbstractEventLoop,
        changed: Changed,
        synced: Callable[[], None],
    ) -> None:
        self.api, self.loop = api, loop
        self.indexes = {kind.name: OwnedIndex() for kind in self.KINDS}
        self._changed, self._on_synced = changed, synced
        self._listed: set[str] = set()
        self._stopping = threading.Event()

    @property
    def synced(self) -> bool:
        return len(self._listed) == len(self.KINDS)

    def observed(self, uid: str) -> Observed:
        """An owner's namespaces and Deployments as the watches last saw them."""
        namespaces = [(str(key), bool(gone)) for key, gone in self.indexes[NAMESPACES.name].of(uid).items()]
        deployments = [
            (key[0], key[1], bool(ready))
            for key, ready in self.indexes[DEPLOYMENTS.name].of(uid).items()
            if isinstance(key, tuple)
        ]
        return readiness.from_watches(uid, namespaces, deployments)

    def start(self) -> None:
        for kind in self.KINDS:
            name = f"watch-{kind.name.lower()}s"
            threading.Thread(target=self._follow, args=(kind,), name=name, daemon=True).start()

    def stop(self) -> None:
        """No new list or watch starts; one under way ends with its watch (the threads are
        daemons: they never hold the process up)."""
        self._stopping.set()

    # -- on the loop ---------------------------------------------------------------------------

    def _replace(self, kind: Kind, found: list[Entry]) -> None:
        self._tell(kind, self.indexes[kind.name].replace(found))
        if kind.name not in self._listed:
            self._listed.add(kind.name)
            if self.synced:
                self._on_synced()

    def _event(self, kind: Kind, key: Key, found: Entry | None) -> None:
        """An object's event: `found`, its entry now, or None when it is gone or names no owner."""
        index = self.indexes[kind.name]
        self._tell(kind, index.drop(key) if found is None else index.put(*found))

    def _tell(self, kind: Kind, changed: list[tuple[str, Key]]) -> None:
        for uid, key in changed:
            self._changed(kind.name, uid, key)

    def _post(self, fn: Callable[..., None], *args: Any) -> bool:
        """Run `fn` on the loop; False, and no more watching, once the loop is closed (the
        operator is gone)."""
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            self._stopping.set()
            return False
        return True

    # -- on the kind's thread ------------------------------------------------------------------

    def _follow(self, kind: Kind) -> None:
        version, failures = "", 0
        while not self._stopping.is_set():
            try:
                if not version:
                    found, version = self._list(kind)
                    if not self._post(self._replace, kind, found):
                        return
                began = time.monotonic()
                version = self._watch(kind, version)
                failures = 0
                # A watch the server ends at once, again and again (a proxy that cuts streams),
                # must not become a loop of requests: at most one a second.
                self._stopping.wait(max(0.0, MIN_WATCH_SECONDS - (time.monotonic() - began)))
            except kubeio.GoneError:  # the version expired, said as an HTTP 410: list again
                version = ""
            except Exception as exc:  # the API server went away or refused: again, a bit later
                failures += 1
                wait = min(MAX_RETRY_SECONDS, 2.0**failures)
                log.warning("watching %ss failed: %s; again in %.0fs", kind.name, exc, wait)
                self._stopping.wait(wait)

    def _list(self, kind: Kind) -> tuple[list[Entry], str]:
        """Every owned object of `kind`, page by page (from the start again when a page's token
        expired), and the version to watch from."""
        started, token = time.monotonic(), ""
        found: list[Entry] = []
        selector = LABEL_OWNER_UID
        while True:
            try:
                page = kubeio.list_page(self.api, kind.name, selector, PAGE, token)
            except kubeio.GoneError:
                found, token = [], ""
                continue
            found += [e for obj in page.items if (e := entry(kind, obj)) is not None]
            token = page.next
            if not token:
                log.info("listed %d owned %ss in %.1fs", len(found), kind.name, time.monotonic() - started)
                return found, page.resource_version

    def _watch(self, kind: Kind, version: str) -> str:
        """One watch from `version`: the version to go on from, "" when it expired (list again)."""
        for event in kubeio.watch_events(self.api, kind.name, LABEL_OWNER_UID, version, WATCH_SECONDS):
            what, obj = event.get("type"), event.get("object") or {}
            if what == "ERROR":
                if obj.get("code") == 410:
                    return ""
                code, reason = int(obj.get("code") or 0), str(obj.get("reason"))
                raise kubeio.ApiError(code, reason, str(obj.get("message")))
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if what in ("ADDED", "MODIFIED", "DELETED"):
                key, value = kind.entry(obj)
                uid = _owner(obj)
                self._post(self._event, kind, key, (uid, key, value) if uid and what != "DELETED" else None)
            if self._stopping.is_set():
                break
        return version
