"""What the operator's handlers share, made once at start-up and carried in kopf's `memo`.

One thread pool runs all blocking client code: convergence passes, their per-worker applies,
tear-downs, the orphan sweep and kopf's own synchronous handlers. A pass waits for its applies
on that same pool, so at most `PASSES` passes run at once (`gate`: urgent ones first) and the
pool is larger than that: the applies always find a free thread.

The process's `Metrics` are here too: passes are timed in `run_pass`, folded wake-ups counted in
`wake`.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kubernetes import client

from testenv_operator.events import EventPoster
from testenv_operator.gate import PassGate, ResyncBudget
from testenv_operator.kubeio import Mandate
from testenv_operator.metrics import Metrics
from testenv_operator.pooling import Pools
from testenv_operator.reconciler import Reconciler
from testenv_operator.settings import Settings
from testenv_operator.watches import OwnedWatches

#: Convergence passes at once (each may wait on the pool for its workers' applies).
PASSES = 8
#: Threads of the one pool: PASSES waiting passes leave the rest to applies and short calls.
THREADS = 32

T = TypeVar("T")


@dataclasses.dataclass
class Runtime:
    api: client.ApiClient
    settings: Settings
    threads: ThreadPoolExecutor
    #: Filling TestEnvironmentPools, and claiming from them (environments' passes do).
    pools: Pools
    reconciler: Reconciler
    #: Whether this process may still write: revoked when it lost the Lease. `api` asks it before
    #: every write; the loops ask it before every pass.
    mandate: Mandate = dataclasses.field(default_factory=Mandate)
    events: EventPoster = dataclasses.field(default_factory=EventPoster)
    metrics: Metrics = dataclasses.field(default_factory=Metrics)
    #: uid -> the event that wakes that object's daemon (`converger`).
    wakers: dict[str, asyncio.Event] = dataclasses.field(default_factory=dict)
    #: pooled worker namespace -> the UID of the environment that claimed it (its Deployments
    #: carry the pool's owner label, so their events name the pool).
    claimers: dict[str, str] = dataclasses.field(default_factory=dict)
    #: uid -> namespace, of environments refused for a per-namespace limit.
    waiting_for_room: dict[str, str] = dataclasses.field(default_factory=dict)
    gate: PassGate = dataclasses.field(default_factory=lambda: PassGate(PASSES))
    #: Full resyncs a second, across every environment (the rest read the watches).
    resyncs: ResyncBudget = dataclasses.field(init=False)
    #: The owned namespaces and Deployments by owner, from the operator's own watches: a
    #: clusterwide operator's only (one serving some namespaces lists its workers' instead).
    owned: OwnedWatches | None = None
    sweeper: asyncio.Task[None] | None = None
    #: Set by SIGUSR1 (`finishing`): no more passes, only deletions, then exit.
    finishing: bool = False
    finisher: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.resyncs = ResyncBudget(self.settings.timing.resyncs_per_second)

    @classmethod
    def make(
        cls,
        api: client.ApiClient,
        settings: Settings,
        mandate: Mandate | None = None,
        metrics: Metrics | None = None,
    ) -> Runtime:
        threads = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="testenv")
        pools = Pools(api, settings, threads)
        reconciler = Reconciler(api, settings, threads, pools)
        return cls(
            api, settings, threads, pools, reconciler, mandate or Mandate(), metrics=metrics or Metrics()
        )

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking client code on the pool, in a copy of the context as asyncio.to_thread
        does (kopf keeps its settings, and the object an event is posted for, in context vars)."""
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self.threads, call)

    async def run_pass(
        self,
        lock: asyncio.Lock,
        fn: Callable[..., T],
        *args: Any,
        kind: str,
        depth: str,
        urgent: bool = False,
    ) -> T:
        """One pass over an object: under its lock (its tear-down takes it too) and one of the
        PASSES places (`urgent`: before the routine passes waiting), on the pool. NotActingError,
        without starting, once the mandate is revoked (a pass may have waited for its place since
        before). `kind` and `depth` label its metrics, which time the work alone: not the wait for
        the lock or a place."""
        async with lock, self.gate.place(urgent):
            self.mandate.check()
            with self.metrics.timing_pass(kind, depth):
                return await self.in_thread(fn, *args)

    def wake(self, uid: str | None) -> None:
        waker = self.wakers.get(uid or "")
        if waker:
            if waker.is_set():  # the pass it asks for is already due: this wake-up adds nothing
                self.metrics.events_folded.inc()
            waker.set()

    def forget_claimer(self, uid: str) -> None:
        for namespace in [ns for ns, claimer in self.claimers.items() if claimer == uid]:
            del self.claimers[namespace]

    def make_room(self, namespace: str) -> None:
        """Wake the environments of `namespace` that wait for room under its limits."""
        for uid, home in list(self.waiting_for_room.items()):
            if home == namespace:
                self.wake(uid)
