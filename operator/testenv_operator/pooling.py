"""Warm pools: worker namespaces made ahead of time, for TestEnvironments to claim.

A TestEnvironmentPool keeps `spec.size` workers of its services free: a namespace
`tp-<namespace>-<pool>-<digest>-<token>` each, with the objects a TestEnvironment's worker has,
labelled as the pool's (LABEL_OWNER_UID and LABEL_POOL_UID both name it). Every worker the pool
makes gets a block of local ports from `spec.portBase` that no other live worker of the pool holds:
Kafka advertises its local port, so the block is fixed before the broker starts and a claimer
forwards exactly those ports (they are in its status, like any worker's).

A claim moves a ready, free namespace to a TestEnvironment by relabelling the namespace alone
(owner labels and LABEL_WORKER), on condition that its resourceVersion has not moved, so two
claims can never take the same one. The objects inside keep the pool's labels: their selectors
are immutable, and replacing them would restart the very services a claim is for. From then on
the namespace is the environment's: deleted with it, by its expiry or by the orphan sweep, and
never handed back, so no claimer ever gets a worker another has used.

Blocking, like the reconciler; the handlers run it in a thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client

from testenv_api import (
    ANNOTATION_POOL_NAME,
    ANNOTATION_PORT_BASE,
    LABEL_OWNER_UID,
    LABEL_POOL_UID,
    LABEL_WORKER,
    PortPlanError,
    plan_ports,
    ports_needed,
)
from testenv_api.crd import DEFAULT_POOL_PORT_BASE
from testenv_operator import kubeio, manifests, naming
from testenv_operator.manifests import Obj, Owner
from testenv_operator.plan import WorkerPlan, plan_worker
from testenv_operator.readiness import deployment_ready
from testenv_operator.settings import Settings
from testenv_operator.sharing import shared_secrets
from testenv_operator.validation import Problem, validate

log = logging.getLogger(__name__)
#: On a pooled namespace: a digest of the services it runs, so a claimer whose spec.services
#: later change is told so instead of being served workers of another service set.
ANNOTATION_SERVICES_DIGEST = "testenv.dev/services-digest"


def services_digest(services: Sequence[Mapping[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(list(services), sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Pool:
    namespace: str
    name: str
    uid: str
    spec: Mapping[str, Any]

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Pool:
        meta = body["metadata"]
        return cls(meta["namespace"], meta["name"], meta["uid"], body.get("spec") or {})

    @property
    def owner(self) -> Owner:
        return Owner(self.namespace, self.name, self.uid)

    @property
    def services(self) -> list[Mapping[str, Any]]:
        return list(self.spec.get("services") or [])

    @property
    def size(self) -> int:
        return int(self.spec.get("size", 2))

    @property
    def port_base(self) -> int:
        return int(self.spec.get("portBase", DEFAULT_POOL_PORT_BASE))

    def serves(self, spec: Mapping[str, Any]) -> bool:
        """Whether an environment with this spec may claim the pool's workers: same services."""
        return bool(self.services) and services_digest(self.services) == services_digest(spec["services"])


@dataclasses.dataclass(frozen=True)
class Slot:
    """One namespace a pool made, as its labels and annotations say."""

    name: str
    pool_uid: str
    pool_name: str
    owner_uid: str
    worker: int
    port_base: int
    services_digest: str
    created: str
    resource_version: str
    terminating: bool

    @classmethod
    def of(cls, namespace: Mapping[str, Any]) -> Slot:
        meta = namespace["metadata"]
        labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
        return cls(
            name=meta["name"],
            pool_uid=labels.get(LABEL_POOL_UID, ""),
            pool_name=notes.get(ANNOTATION_POOL_NAME, ""),
            owner_uid=labels.get(LABEL_OWNER_UID, ""),
            worker=int(labels.get(LABEL_WORKER, "0")),
            port_base=int(notes.get(ANNOTATION_PORT_BASE, "0")),
            services_digest=notes.get(ANNOTATION_SERVICES_DIGEST, ""),
            created=str(meta.get("creationTimestamp", "")),
            resource_version=str(meta.get("resourceVersion", "")),
            terminating=bool(meta.get("deletionTimestamp")),
        )

    @property
    def free(self) -> bool:
        return self.owner_uid == self.pool_uid and not self.terminating


def slot_ports(services: Sequence[Mapping[str, Any]], port_base: int) -> list[Any]:
    """The planned ports of one worker whose block starts at `port_base`."""
    return plan_ports({"services": list(services), "workers": 1, "portBase": port_base})[0]


def next_block(taken: Iterable[int], first: int, size: int) -> int:
    """The lowest start from `first`, in steps of `size`, whose block overlaps no taken block."""
    starts = sorted(taken)
    start = first
    while any(start < other + size and other < start + size for other in starts):
        start += size
    return start


@dataclasses.dataclass
class PoolOutcome:
    status: dict[str, Any]
    created: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)
    problems: list[Problem] = dataclasses.field(default_factory=list)


class Pools:
    """Filling pools, and claiming from them."""

    def __init__(self, api: client.ApiClient, settings: Settings, threads: ThreadPoolExecutor) -> None:
        self.api = api
        self.settings = settings
        self.threads = threads
        self._allocating: dict[str, threading.Lock] = {}

    # -- reading ------------------------------------------------------------------------------

    def slots(self, selector: str) -> list[Slot]:
        return [Slot.of(ns) for ns in kubeio.list_labelled(self.api, "Namespace", selector)]

    def ready_services(self, pool_uids: Iterable[str]) -> frozenset[tuple[str, str]]:
        """(namespace, service) of every ready Deployment the given pools made."""
        ready = set()
        for uid in set(pool_uids):
            for deployment in kubeio.list_labelled(self.api, "Deployment", f"{LABEL_OWNER_UID}={uid}"):
                if deployment_ready(deployment):
                    ready.add((deployment["metadata"]["namespace"], deployment["metadata"]["name"]))
        return frozenset(ready)

    def ready_namespaces(self, pool: Pool) -> set[str]:
        """The pool's namespaces where every service has a ready Deployment."""
        pairs = self.ready_services([pool.uid])
        return {ns for ns, _ in pairs if all((ns, s["name"]) in pairs for s in pool.services)}

    def plan(self, index: int, slot: Slot, services: Sequence[Mapping[str, Any]]) -> WorkerPlan:
        """A pooled worker's plan: its services, rendered for its namespace and port block."""
        return plan_worker(
            index, slot.name, list(services), slot_ports(services, slot.port_base), self.settings
        )

    # -- making -------------------------------------------------------------------------------

    def make(self, pool: Pool, secrets: list[Obj], claimer: tuple[Owner, int] | None = None) -> str:
        """One new worker of `pool` on the lowest free port block; a claimer takes it at once.

        PortPlanError when no block is left below 65536.
        """
        owner, index = claimer or (pool.owner, 0)
        # Choosing a block and creating the namespace that holds it happen under one lock per
        # pool, so two passes (a refill, two claimers) never pick the same block.
        with self._allocating.setdefault(pool.uid, threading.Lock()):
            slots = self.slots(f"{LABEL_POOL_UID}={pool.uid}")
            per = ports_needed({"services": pool.services, "workers": 1})
            port_base = next_block([s.port_base for s in slots if not s.terminating], pool.port_base, per)
            slot_ports(pool.services, port_base)  # PortPlanError past 65535
            name = naming.pool_namespace(pool.namespace, pool.name, pool.uid, uuid.uuid4().hex[:6])
            namespace = manifests.namespace(owner, name, index)
            namespace["metadata"]["labels"][LABEL_POOL_UID] = pool.uid
            namespace["metadata"]["annotations"] = {
                ANNOTATION_POOL_NAME: pool.name,
                ANNOTATION_PORT_BASE: str(port_base),
                ANNOTATION_SERVICES_DIGEST: services_digest(pool.services),
            }
            if not kubeio.create_namespace(self.api, namespace):
                raise kubeio.ConflictError(409, "Conflict", f"namespace {name} exists already")
        self._apply(pool, name, port_base, secrets)
        return name

    def _apply(self, pool: Pool, name: str, port_base: int, secrets: list[Obj]) -> None:
        self._apply_as(pool.owner, pool.services, name, port_base, secrets)

    def _apply_as(
        self,
        owner: Owner,
        services: Sequence[Mapping[str, Any]],
        name: str,
        port_base: int,
        secrets: list[Obj],
    ) -> None:
        plan = plan_worker(0, name, list(services), slot_ports(services, port_base), self.settings)
        for obj in plan.objects(owner, self.settings.fences, secrets):
            kubeio.apply(self.api, obj)

    def reapply(
        self, slot: Slot, namespace: str, services: Sequence[Mapping[str, Any]], secrets: list[Obj]
    ) -> None:
        """Apply a claimed worker's objects again, as its pool made them and under the pool's labels
        (their selectors cannot change), with this operator's fences: what an admin deleted comes
        back, and a newer operator's fences reach it. The pool itself may be gone by now: its
        name and uid are on the slot, and `services` are its services (the claimer's, which match)."""
        self._apply_as(
            Owner(namespace, slot.pool_name, slot.pool_uid), services, slot.name, slot.port_base, secrets
        )

    # -- the pool's own pass ------------------------------------------------------------------

    def fill(self, body: Mapping[str, Any], full: bool) -> PoolOutcome:
        """Bring the pool to spec.size free workers: make the missing, delete the surplus, report."""
        pool = Pool.of(body)
        generation = int(body["metadata"].get("generation", 1))
        problems = validate(
            {"services": pool.services, "workers": 1, "portBase": pool.port_base}, self.settings
        )
        secrets: list[Obj] = []
        if not problems:
            secrets, problems = shared_secrets(self.api, pool.owner, pool.spec)
        slots = self.slots(f"{LABEL_POOL_UID}={pool.uid}")
        free = sorted((s for s in slots if s.free), key=lambda s: (s.created, s.name))
        claimed = [s for s in slots if not s.free and not s.terminating]
        outcome = PoolOutcome({})
        if problems:
            outcome.problems = problems
            message = "; ".join(map(str, problems))
            outcome.status = _pool_status(generation, "Failed", message, len(free), 0, len(claimed))
            return outcome
        # Workers of services the pool no longer runs (its spec changed) are replaced.
        digest = services_digest(pool.services)
        for slot in [s for s in free if s.services_digest != digest]:
            free.remove(slot)
            if kubeio.delete_namespace_if_unchanged(self.api, slot.name, slot.resource_version):
                outcome.removed.append(slot.name)
        ready = self.ready_namespaces(pool)
        # Surplus (a smaller size): the newest go first, starting ones before ready ones.
        kept_first = sorted(free, key=lambda s: (s.name not in ready, s.created))
        surplus = kept_first[pool.size :]
        for slot in surplus:  # unless a claim took it meanwhile
            if kubeio.delete_namespace_if_unchanged(self.api, slot.name, slot.resource_version):
                outcome.removed.append(slot.name)
        free = [s for s in free if s not in surplus]

        def make_one(_: int) -> str | None:
            try:
                return self.make(pool, secrets)
            except PortPlanError:
                return None

        made = [name for name in self.threads.map(make_one, range(pool.size - len(free))) if name]
        if len(made) < pool.size - len(free):
            per = ports_needed({"services": pool.services, "workers": 1})
            problem = Problem(
                "spec.portBase",
                f"no free block of {per} local ports is left below 65536 from {pool.port_base} for "
                f"{pool.size} free and {len(claimed)} claimed workers: lower spec.portBase or spec.size",
            )
            outcome.problems.append(problem)
        outcome.created = made
        if full:  # drift: put back whatever was removed from a free worker
            list(self.threads.map(lambda s: self._apply(pool, s.name, s.port_base, secrets), free))
        message = outcome.problems[0].message if outcome.problems else ""
        free_ready = {s.name for s in free} & ready
        phase = "Ready" if len(free_ready) >= pool.size and not outcome.problems else "Filling"
        if not message:
            message = f"{len(free_ready)} of {pool.size} free workers ready, {len(claimed)} claimed"
        outcome.status = _pool_status(
            generation, phase, message, len(free) + len(made), len(free_ready), len(claimed)
        )
        return outcome

    def tear_down(self, body: Mapping[str, Any]) -> list[str]:
        """Delete the pool's free workers (claimed ones are their claimers'); those still there."""
        uid = body["metadata"]["uid"]
        left = []
        for slot in self.slots(f"{LABEL_POOL_UID}={uid},{LABEL_OWNER_UID}={uid}"):
            if not slot.terminating and not kubeio.delete_namespace_if_unchanged(
                self.api, slot.name, slot.resource_version
            ):
                continue  # claimed meanwhile: its claimer's now
            kubeio.delete_pods_now(self.api, slot.name)
            left.append(slot.name)
        return left

    # -- claiming -----------------------------------------------------------------------------

    def claim(self, pool: Pool, owner: Owner, indexes: Sequence[int]) -> dict[int, str]:
        """Take ready free workers of `pool` for these worker indexes of `owner`, oldest first.

        Each take is a conditional relabel: a worker another claim took first is skipped.
        Indexes left out of the answer found no ready worker.
        """
        free = sorted(
            (s for s in self.slots(f"{LABEL_POOL_UID}={pool.uid},{LABEL_OWNER_UID}={pool.uid}") if s.free),
            key=lambda s: (s.created, s.name),
        )
        ready, digest = self.ready_namespaces(pool), services_digest(pool.services)
        candidates = iter([s for s in free if s.name in ready and s.services_digest == digest])
        taken: dict[int, str] = {}
        for index in indexes:
            for slot in candidates:
                labels = {**owner.labels(), LABEL_WORKER: str(index)}
                if kubeio.relabel_namespace(self.api, slot.name, labels, slot.resource_version):
                    taken[index] = slot.name
                    break
        return taken

    def provide(
        self, pool: Pool, owner: Owner, indexes: Sequence[int]
    ) -> tuple[list[int], list[int], list[Problem]]:
        """Workers of `pool` for these indexes of `owner`: ready free ones claimed, and for the
        rest, new ones made already claimed. (claimed indexes, made indexes, problems)."""
        taken = self.claim(pool, owner, indexes)
        rest = [i for i in indexes if i not in taken]
        if not rest:
            return sorted(taken), [], []
        secrets, problems = shared_secrets(self.api, pool.owner, pool.spec)
        if problems:
            return sorted(taken), [], problems
        try:
            list(self.threads.map(lambda index: self.make(pool, secrets, claimer=(owner, index)), rest))
        except PortPlanError as exc:
            return (
                sorted(taken),
                [],
                [Problem("spec.workers", f"the pool {pool.name} has no local ports left: {exc}")],
            )
        return sorted(taken), rest, []


def _pool_status(
    generation: int, phase: str, message: str, free: int, ready: int, claimed: int
) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "phase": phase,
        "message": message,
        "free": free,
        "ready": ready,
        "claimed": claimed,
    }
