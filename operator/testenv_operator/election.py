"""Leader election on a coordination.k8s.io Lease: of several operator processes (replicas, or an
old and a new pod while an upgrade rolls out), only the one holding the Lease runs kopf.

The rules are client-go's, and every one of them is decided on the deciding process's own
monotonic clock, never by comparing a time another process wrote with this one's wall clock
(two hosts' clocks may be any amount apart):

- a holder renews every `retry` seconds. A renewal counts from the moment its attempt started
  (before its read), which is never later than the moment any other process can see the record
  it writes;
- a holder that has not renewed for `renew_deadline` seconds (< `duration`) steps down: it stops
  writing and exits. A watchdog (`keep`) decides that, not the renewal: a renewal stuck on a dead
  but open connection cannot hold the decision up, even before its read timeout ends it;
- a candidate takes the Lease only once `duration` seconds passed since it last saw the record
  change (holder, renewTime, transitions...): client-go's `observedTime`. A record nobody holds
  (given up) it takes at once;
- every write carries the resourceVersion it read, so of two candidates one gets a 409 and stays
  a candidate. A holder that stops cleanly gives the Lease up, so a successor starts at once.

Why no two processes act at once: let L be the start of the holder's last successful renewal.
Any candidate sees that record at L or later, so takes over at L + duration at the earliest. The
holder stops writing at L + renew_deadline and is gone by L + exit_deadline, both earlier. What
this cannot stop is a request sent before the step-down that the network delivers later (as with
client-go); the operator's writes are server-side applies of the state a spec asks for, which the
new holder writes again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from kubernetes import client

from testenv_operator import kubeio
from testenv_operator.kubeio import Timeouts

log = logging.getLogger(__name__)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _micro(when: datetime.datetime) -> str:
    """A MicroTime as the API server writes it."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def identity() -> str:
    """This process, as the Lease names its holder: the pod (host) name, the pid and a nonce."""
    return f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:6]}"


@dataclasses.dataclass(frozen=True)
class Terms:
    """Every bound of the election, and of the operator's API calls, from one setting: how long a
    Lease lasts unrenewed (TESTENV_LEASE_SECONDS)."""

    #: The Lease's leaseDurationSeconds: how long a candidate waits after the record last changed.
    duration: int
    #: How long a holder goes without a successful renewal before it steps down.
    renew_deadline: float
    #: Seconds between renewals (and between a candidate's tries).
    retry: float

    @classmethod
    def of(cls, lease_seconds: int) -> Terms:
        """client-go's proportions (15 s, 10 s, 2 s): a third of the Lease is the margin between a
        holder's step-down and the earliest takeover."""
        return cls(lease_seconds, lease_seconds * 2 / 3, max(1.0, lease_seconds / 7.5))

    @property
    def exit_deadline(self) -> float:
        """Seconds after its last renewal by which a holder that stepped down has exited, whether
        kopf stopped by then or not: half-way through the margin."""
        return (self.renew_deadline + self.duration) / 2

    @property
    def lease_calls(self) -> Timeouts:
        """The Lease's own calls: a third of the renew deadline, so that a renewal stuck on a dead
        connection gives up in time for another try before the holder has to step down."""
        bound = max(0.5, self.renew_deadline / 3)
        return Timeouts(bound, bound)

    @property
    def calls(self) -> Timeouts:
        """Every other call of the operator: connecting within a third of the Lease (5 s at most),
        each read within half of it (30 s at most). A read timeout is per read, not per answer,
        so a long list that keeps arriving is not cut; one that stops is, well before a standby
        could take over."""
        return Timeouts(min(5.0, self.duration / 3), min(30.0, self.duration / 2))


Record = tuple[Any, ...]


def _record(current: dict[str, Any] | None) -> Record:
    """What of a Lease counts as a change (client-go compares its whole LeaderElectionRecord)."""
    spec = (current or {}).get("spec") or {}
    keys = ("holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime", "leaseTransitions")
    return tuple(spec.get(key) for key in keys)


@dataclasses.dataclass
class Lease:
    api: client.ApiClient
    namespace: str
    name: str
    holder: str = dataclasses.field(default_factory=identity)
    terms: Terms = dataclasses.field(default_factory=lambda: Terms.of(15))
    #: This process's monotonic clock (a test gives a fake one).
    clock: Callable[[], float] = time.monotonic
    #: When this holder's last successful renewal started (`clock`), None before the first.
    last_renewed: float | None = None
    #: The record as last read, and when (`clock`) it was first read as it is.
    seen: Record | None = None
    seen_since: float = 0.0
    #: Set by `release`: a renewal still in flight then must not take the Lease back.
    released: bool = False
    #: One Lease call sequence at a time: a renewal in flight ends before a release starts.
    _calls: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def _read(self) -> dict[str, Any] | None:
        return kubeio.read_lease(self.api, self.namespace, self.name)

    def _body(self, current: dict[str, Any] | None, now: datetime.datetime) -> dict[str, Any]:
        spec = dict((current or {}).get("spec") or {})
        taking_over = spec.get("holderIdentity") != self.holder
        transitions = int(spec.get("leaseTransitions") or 0)
        if taking_over:
            spec["acquireTime"] = _micro(now)
            if spec.get("holderIdentity"):
                transitions += 1
        spec.update(
            holderIdentity=self.holder,
            leaseDurationSeconds=self.terms.duration,
            renewTime=_micro(now),  # for people (kubectl): no process decides by it
            leaseTransitions=transitions,
        )
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if current:
            metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def observe(self, current: dict[str, Any] | None) -> None:
        """Note the record as read now; its clock restarts only when it changed."""
        record = _record(current)
        if record != self.seen:
            self.seen, self.seen_since = record, self.clock()

    @property
    def seen_holder(self) -> str | None:
        """The holder the record named when last read (None: nobody, or not read yet)."""
        return str(self.seen[0]) if self.seen and self.seen[0] else None

    def held_by_another(self) -> str | None:
        """The other holder named by the record last `observe`d, while its Lease has not run out
        on this process's clock: `leaseDurationSeconds` since the record was seen to change."""
        other = self.seen_holder
        if other is None or other == self.holder or self.seen is None:
            return None
        lasts = int(self.seen[1] or self.terms.duration)
        return other if self.clock() < self.seen_since + lasts else None

    def try_hold(self) -> bool:
        """Take or renew the Lease; False while someone else holds it or another write won.
        Blocking (a thread runs it); every call in it has the `lease_calls` timeouts."""
        started = self.clock()
        with self._calls:
            if self.released:
                return False
            current = self._read()
            self.observe(current)
            if self.held_by_another():
                return False
            body = self._body(current, _now())
            try:
                kubeio.write_lease(self.api, body)
            except kubeio.ConflictError:  # another candidate wrote first
                return False
            self.observe(body)
            self.last_renewed = started
            return True

    def time_left(self) -> float:
        """Seconds until this holder must step down (<= 0: now); it was never held: none."""
        if self.last_renewed is None:
            return 0.0
        return self.last_renewed + self.terms.renew_deadline - self.clock()

    def exit_in(self) -> float:
        """Seconds left until a holder that stepped down must have exited (see Terms)."""
        if self.last_renewed is None:
            return 0.0
        return self.last_renewed + self.terms.exit_deadline - self.clock()

    def release(self) -> None:
        """Give the Lease up (a clean stop), so the next candidate need not wait it out. A renewal
        in flight ends first; none is made after."""
        with self._calls:
            self.released = True
            current = self._read()
            spec = (current or {}).get("spec") or {}
            if current is None or spec.get("holderIdentity") != self.holder:
                return
            body = self._body(current, _now())
            body["spec"].update(holderIdentity=None, leaseDurationSeconds=1, renewTime=_micro(_now()))
            try:
                kubeio.write_lease(self.api, body)
            except kubeio.ApiError as exc:
                log.warning("could not give the Lease %s/%s up: %s", self.namespace, self.name, exc)


async def keep(lease: Lease) -> str:
    """Renew the Lease every `retry` seconds until this holder has to step down; why it has to.

    The watchdog and the renewals are one loop, which waits for whichever comes first: the renew
    deadline (moved on by each success), or the renewal in flight. A renewal's thread cannot be
    cancelled: stuck on a dead connection, it goes on until its read timeout, and the decision
    does not wait for it. (No task is spawned: kopf counts tasks made while it runs as its own,
    and waits for them when it stops.)"""
    loop = asyncio.get_running_loop()
    renewal: asyncio.Future[bool] | None = None
    due = lease.clock() + lease.terms.retry
    while (left := lease.time_left()) > 0:
        if renewal is None:
            if (wait := due - lease.clock()) > 0:
                await asyncio.sleep(min(wait, left))
                continue
            renewal = loop.run_in_executor(None, lease.try_hold)
        await asyncio.wait({renewal}, timeout=left)
        if not renewal.done():
            continue  # the deadline, unless the renewal just made it
        done, renewal, due = renewal, None, lease.clock() + lease.terms.retry
        try:
            if done.result():
                continue
        except Exception as exc:  # refused, timed out, or the API server is away: the deadline decides
            log.warning("renewing the Lease %s/%s failed: %s", lease.namespace, lease.name, exc)
            continue
        if (other := lease.seen_holder) and other != lease.holder:
            return f"the Lease is held by {other} now"
    return f"not renewed for {lease.terms.renew_deadline:.1f}s"
