"""One pass of convergence for one TestEnvironment: validate, plan, observe, apply, prune, report.

Blocking (the official client is synchronous); the kopf handlers run it in a thread. Workers are
applied in parallel, so time-to-ready is the slowest service, never the sum.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client

import testenv_api
from testenv_api import LABEL_OWNER_UID, LABEL_POOL_UID, ConditionType, Phase
from testenv_operator import kubeio, manifests, readiness
from testenv_operator.manifests import Obj, Owner
from testenv_operator.plan import WorkerPlan, plan_environment
from testenv_operator.pooling import Pool, Pools, Slot, services_digest
from testenv_operator.readiness import NamespaceState, Observed
from testenv_operator.settings import Settings
from testenv_operator.sharing import shared_secrets
from testenv_operator.validation import Problem, Sibling, environments_over_limit, validate

log = logging.getLogger(__name__)
_NAMESPACED_KINDS = (
    "Deployment",
    "Service",
    "ResourceQuota",
    "LimitRange",
    "NetworkPolicy",
    "Secret",
    "RoleBinding",
)


@dataclasses.dataclass
class Outcome:
    """What one pass did and saw, for status and events."""

    status: dict[str, Any]
    problems: list[Problem]
    created: list[int] = dataclasses.field(default_factory=list)
    repaired: list[int] = dataclasses.field(default_factory=list)
    removed_namespaces: list[str] = dataclasses.field(default_factory=list)
    foreign: list[str] = dataclasses.field(default_factory=list)
    #: Refused for a per-namespace limit: waits for a sibling to make room.
    over_limit: bool = False
    #: Workers taken ready from a pool, and the pools that must refill (their UIDs).
    claimed: list[int] = dataclasses.field(default_factory=list)
    drained_pools: set[str] = dataclasses.field(default_factory=set)
    #: Namespaces whose Deployments carry a pool's labels: their changes concern this environment.
    pooled_namespaces: list[str] = dataclasses.field(default_factory=list)


class Depth(enum.Enum):
    """How far one pass of an environment goes."""

    #: The spec changed, or this operator is new to it: apply every worker; list every kind.
    APPLY = "apply"
    #: A resync (every resync_seconds): list every kind, to find drift; repair; prune.
    RESYNC = "resync"
    #: List namespaces and Deployments; repair what is missing; prune.
    REPAIR = "repair"
    #: Read namespaces and Deployments as the watches saw them, and only report: their view may
    #: lag this operator's own applies, so repairs and pruning wait for a pass that lists.
    REPORT = "report"


@dataclasses.dataclass(frozen=True)
class PassInput:
    """What one pass of an environment starts from."""

    body: Mapping[str, Any]
    depth: Depth = Depth.APPLY
    #: The environments of its namespace, oldest first (for the per-namespace limits).
    siblings: Sequence[Sibling] = ()
    #: The TestEnvironmentPools of its namespace: a new environment whose services one of them
    #: runs claims its workers from it (see pooling).
    pools: Sequence[Mapping[str, Any]] = ()
    #: Its namespaces and Deployments as the operator's watches last saw them: a REPORT pass's view.
    watched: Observed | None = None

    def __post_init__(self) -> None:
        if (self.depth is Depth.REPORT) != (self.watched is not None):
            raise ValueError("a REPORT pass, and only a REPORT pass, reads what the watches saw")

    @property
    def owner(self) -> Owner:
        return owner_of(self.body)

    @property
    def spec(self) -> Mapping[str, Any]:
        spec: Mapping[str, Any] = self.body["spec"]
        return spec

    @property
    def acting(self) -> bool:
        """Whether the pass applies and prunes (a REPORT pass only reports)."""
        return self.depth is not Depth.REPORT

    @property
    def every_kind(self) -> bool:
        """Whether the pass lists every kind it owns, not just namespaces and Deployments."""
        return self.depth in (Depth.APPLY, Depth.RESYNC)


def _pooled(namespaces: Iterable[Obj]) -> list[Slot]:
    """The namespaces, of those an environment owns, that a pool made (its claimed workers)."""
    return [Slot.of(ns) for ns in namespaces if LABEL_POOL_UID in (ns["metadata"].get("labels") or {})]


def _previous_phases(body: Mapping[str, Any]) -> dict[Any, Any]:
    """Each worker's phase as the environment's status last said, by index."""
    return {w.get("index"): w.get("phase") for w in (body.get("status") or {}).get("workers") or []}


def owner_of(body: Mapping[str, Any]) -> Owner:
    meta = body["metadata"]
    return Owner(meta["namespace"], meta["name"], meta["uid"])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _parse_time(value: str) -> datetime.datetime:
    """An RFC 3339 time; ValueError for anything else, a time without an offset included."""
    parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset (RFC 3339 needs one, for example a final Z)")
    return parsed


def expires_at(body: Mapping[str, Any]) -> datetime.datetime:
    ttl = int(((body.get("spec") or {}).get("lifetime") or {}).get("ttlSeconds", 21600))
    return _parse_time(body["metadata"]["creationTimestamp"]) + datetime.timedelta(seconds=ttl)


def expiry_reason(body: Mapping[str, Any], now: datetime.datetime | None = None) -> str | None:
    """Why the environment should be deleted now (TTL or a stale heartbeat), or None."""
    now = now or _now()
    if now >= expires_at(body):
        return f"its lifetime.ttlSeconds ran out at {expires_at(body):%Y-%m-%dT%H:%M:%SZ}"
    timeout = ((body.get("spec") or {}).get("lifetime") or {}).get("heartbeatTimeoutSeconds")
    beat = (body["metadata"].get("annotations") or {}).get(testenv_api.ANNOTATION_HEARTBEAT)
    if timeout and beat:
        try:
            last = _parse_time(beat)
        except ValueError:
            return None  # an unreadable heartbeat is reported nowhere better than by not expiring on it
        if (now - last).total_seconds() > int(timeout):
            return f"its {testenv_api.ANNOTATION_HEARTBEAT} annotation is older than {timeout}s (last {beat})"
    return None


def seconds_to_expiry(body: Mapping[str, Any], now: datetime.datetime | None = None) -> float:
    """Seconds until `expiry_reason` would name a reason, if nothing changes meanwhile (>= 0)."""
    now = now or _now()
    deadlines = [expires_at(body)]
    timeout = ((body.get("spec") or {}).get("lifetime") or {}).get("heartbeatTimeoutSeconds")
    beat = (body["metadata"].get("annotations") or {}).get(testenv_api.ANNOTATION_HEARTBEAT)
    if timeout and beat:
        with contextlib.suppress(ValueError):
            deadlines.append(_parse_time(beat) + datetime.timedelta(seconds=int(timeout)))
    return max(0.0, (min(deadlines) - now).total_seconds())


class Reconciler:
    def __init__(
        self, api: client.ApiClient, settings: Settings, threads: ThreadPoolExecutor, pools: Pools
    ) -> None:
        self.api = api
        self.settings = settings
        self.threads = threads
        self.pools = pools

    # -- observing ----------------------------------------------------------------------------

    def observe(
        self, uid: str, plans: Iterable[WorkerPlan], full: bool, listed: list[Obj] | None = None
    ) -> Observed:
        """What the environment owns now: its namespaces first, then the objects inside them.

        Every owned object lives in an owned namespace, so when there is none (a new environment)
        the per-kind lists are skipped; otherwise they, and the reads of planned namespaces that
        are not labelled ours, run at once on the pool. `listed`: the owned namespaces, if just listed.
        """
        selector = f"{LABEL_OWNER_UID}={uid}"
        if listed is None:
            listed = kubeio.list_labelled(self.api, "Namespace", selector)
        namespaces = {
            ns["metadata"]["name"]: NamespaceState(uid, bool(ns["metadata"].get("deletionTimestamp")))
            for ns in listed
        }
        kinds = (_NAMESPACED_KINDS if full else ("Deployment",)) if namespaces else ()
        lists = self.threads.map(lambda kind: (kind, kubeio.list_labelled(self.api, kind, selector)), kinds)
        namespaces.update(self._unlisted(plans, namespaces))
        ready: set[tuple[str, str]] = set()
        present: set[tuple[str, str, str]] = set()
        for kind, objects in lists:
            for obj in objects:
                meta = obj["metadata"]
                present.add((kind, meta["namespace"], meta["name"]))
                if kind == "Deployment" and readiness.deployment_ready(obj):
                    ready.add((meta["namespace"], meta["name"]))
        return Observed(namespaces, frozenset(ready), frozenset(present))

    def _unlisted(
        self, plans: Iterable[WorkerPlan], namespaces: Mapping[str, NamespaceState]
    ) -> dict[str, NamespaceState]:
        """Planned namespaces that exist but are not labelled ours (never to be touched), read at once."""
        unlisted = [p.namespace for p in plans if p.namespace not in namespaces]
        reads = self.threads.map(lambda name: kubeio.read_namespace(self.api, name), unlisted)
        found = {}
        for name, namespace in zip(unlisted, reads, strict=True):
            if namespace is not None:
                labels = namespace["metadata"].get("labels") or {}
                found[name] = NamespaceState(
                    labels.get(LABEL_OWNER_UID), bool(namespace["metadata"].get("deletionTimestamp"))
                )
        return found

    # -- applying -----------------------------------------------------------------------------

    def _apply_worker(
        self, owner: Owner, plan: WorkerPlan, state: NamespaceState | None, secrets: list[Obj]
    ) -> bool:
        """Apply one worker's objects; False when its namespace is not ours (or not there yet)."""
        ns = manifests.namespace(owner, plan.namespace, plan.index)
        if state is None:
            if not kubeio.create_namespace(self.api, ns):
                return False
        elif state.owner_uid != owner.uid or state.terminating:
            return False
        else:
            kubeio.apply(self.api, ns)
        for obj in plan.objects(owner, self.settings.fences, secrets):
            kubeio.apply(self.api, obj)
        return True

    def _incomplete(self, owner: Owner, plan: WorkerPlan, observed: Observed, full: bool) -> bool:
        state = observed.namespaces.get(plan.namespace)
        if state is None:
            return True
        if state.owner_uid != owner.uid or state.terminating:
            return False
        kinds = _NAMESPACED_KINDS if full else ("Deployment",)
        wanted = {
            (o["kind"], plan.namespace, o["metadata"]["name"])
            for o in plan.objects(owner, self.settings.fences, [])
            if o["kind"] in kinds
        }
        return not wanted <= observed.present

    def _prune(self, owner: Owner, plans: list[WorkerPlan], observed: Observed) -> list[str]:
        wanted_namespaces = {p.namespace for p in plans}
        removed = [
            name
            for name, state in observed.namespaces.items()
            if state.owner_uid == owner.uid and name not in wanted_namespaces and not state.terminating
        ]
        for name in removed:
            kubeio.delete(self.api, "Namespace", name)
        services = {s.name for s in plans[0].services} if plans else set()
        access = bool(plans and plans[0].access_subjects)
        for kind, ns, name in observed.present:
            if ns not in wanted_namespaces:
                continue
            stale_service = kind in ("Deployment", "Service") and name not in services
            if stale_service or (kind == "RoleBinding" and not access):
                kubeio.delete(self.api, kind, name, ns)
        return removed

    # -- one pass -----------------------------------------------------------------------------

    def converge(self, given: PassInput) -> Outcome:
        """One pass: refuse what cannot be served, then converge the workers the environment owns
        (`owned_pass`) or those it claimed from a pool (`claimed_pass`)."""
        owner, spec = given.owner, given.spec
        problems = validate(spec, self.settings)
        over = environments_over_limit(given.siblings, owner.name, self.settings)
        if over:
            problems.append(over)
        if problems:
            return Outcome(self._status(given.body, [], problems), problems, over_limit=over is not None)
        secrets, missing = shared_secrets(self.api, owner, spec)
        if missing:
            return Outcome(self._status(given.body, [], missing, waiting=True), missing)
        pooled = any(w.get("pool") for w in (given.body.get("status") or {}).get("workers") or [])
        listed: list[Obj] | None = None
        if given.acting or pooled:
            listed = kubeio.list_labelled(self.api, "Namespace", f"{LABEL_OWNER_UID}={owner.uid}")
            slots = _pooled(listed)
            serving = [pool for pool in map(Pool.of, given.pools) if pool.serves(spec)]
            if slots or pooled or (not listed and given.depth is Depth.APPLY and serving):
                return self.claimed_pass(given, slots, serving, secrets)
        return self.owned_pass(given, secrets, listed)

    def owned_pass(self, given: PassInput, secrets: list[Obj], listed: list[Obj] | None) -> Outcome:
        """A pass of an environment whose workers are namespaces made for it: apply (every worker,
        or what is missing), delete what it no longer wants, report readiness. `listed`: its
        namespaces, if just listed."""
        owner = given.owner
        plans = plan_environment(owner, given.spec, self.settings)
        if given.watched is not None:
            # Planned namespaces the watches do not show may be someone else's: say so every pass.
            unlisted = self._unlisted(plans, given.watched.namespaces)
            observed = dataclasses.replace(given.watched, namespaces={**given.watched.namespaces, **unlisted})
        else:
            observed = self.observe(owner.uid, plans, given.every_kind, listed)
        outcome = Outcome({}, [])
        refused: list[Problem] = []
        if given.acting:
            todo = [
                p
                for p in plans
                if given.depth is Depth.APPLY or self._incomplete(owner, p, observed, given.every_kind)
            ]
            refused = self._apply(owner, todo, observed, secrets, outcome)
            outcome.removed_namespaces = self._prune(owner, plans, observed)
        previous = _previous_phases(given.body)
        workers = [
            readiness.worker_status(
                p, observed, owner.uid, previous.get(p.index) in (Phase.READY, Phase.DEGRADED)
            )
            for p in plans
        ]
        outcome.foreign = [w.namespace for w in workers if w.phase == Phase.FAILED]
        if refused:
            outcome.problems = refused
            outcome.status = self._status(given.body, [], refused, reason="ApplyRefused")
            return outcome
        outcome.status = self._status(given.body, workers, [])
        return outcome

    def _apply(
        self, owner: Owner, todo: list[WorkerPlan], observed: Observed, secrets: list[Obj], outcome: Outcome
    ) -> list[Problem]:
        """Apply these workers at once on the pool, noting each in `outcome` as created or
        repaired; what the API server refused."""
        states = [observed.namespaces.get(p.namespace) for p in todo]
        refused: list[Problem] = []

        def apply_one(index: int) -> bool:
            try:
                return self._apply_worker(owner, todo[index], states[index], secrets)
            except kubeio.ApiError as exc:  # e.g. 403: say so instead of "Provisioning" forever
                refused.append(
                    Problem(f"worker {todo[index].index}", f"the API server refused an apply: {exc}")
                )
                return False

        for plan, state, applied in zip(
            todo, states, self.threads.map(apply_one, range(len(todo))), strict=True
        ):
            if applied:
                (outcome.created if state is None else outcome.repaired).append(plan.index)
        return refused

    def claimed_pass(
        self, given: PassInput, slots: list[Slot], serving: list[Pool], secrets: list[Obj]
    ) -> Outcome:
        """A pass of an environment whose workers are pooled namespaces (`slots`): claim what is
        missing from the first pool `serving` it (ready ones first, then new ones made for it),
        drop the surplus, converge the claimed ones, report readiness."""
        owner, spec = given.owner, given.spec
        outcome = Outcome({}, [])
        workers = int(spec.get("workers", 1))
        have = {s.worker for s in slots if not s.terminating}
        missing = [i for i in range(workers) if i not in have]
        if given.acting and missing and serving:
            pool = serving[0]
            claimed, made, problems = self.pools.provide(pool, owner, missing)
            outcome.claimed, outcome.created = claimed, made
            outcome.drained_pools.add(pool.uid)
            if problems:  # the pool's Secrets: new workers wait for them, as the pool's own do
                outcome.problems = problems
                outcome.status = self._status(given.body, [], problems, waiting=True)
                return outcome
            slots = _pooled(kubeio.list_labelled(self.api, "Namespace", f"{LABEL_OWNER_UID}={owner.uid}"))
        by_index: dict[int, Slot] = {}
        for slot in sorted((s for s in slots if not s.terminating), key=lambda s: (s.worker, s.created)):
            if slot.worker in by_index or slot.worker >= workers:
                if given.acting:
                    kubeio.delete(self.api, "Namespace", slot.name)
                    outcome.removed_namespaces.append(slot.name)
            else:
                by_index[slot.worker] = slot
        outcome.pooled_namespaces = [s.name for s in by_index.values()]
        problems = []
        digest = services_digest(spec["services"])
        if changed := sorted({s.pool_name for s in by_index.values() if s.services_digest != digest}):
            problems.append(
                Problem(
                    "spec.services",
                    f"this environment's workers were claimed from pool {', '.join(changed)}, which runs "
                    "other services, and a pooled worker's services cannot change: delete this "
                    "TestEnvironment and create it again",
                )
            )
        if missing := [i for i in range(workers) if i not in by_index and not serving]:
            problems.append(
                Problem(
                    "spec.workers",
                    f"workers {missing} have no namespace, and no TestEnvironmentPool in {owner.namespace} "
                    "runs these services any more to make one: delete this TestEnvironment and create it "
                    "again",
                )
            )
        if given.acting and not changed:
            self._converge_claimed(given, by_index, secrets, outcome)
        ready = self.pools.ready_services(s.pool_uid for s in by_index.values())
        observed = Observed(
            {s.name: readiness.NamespaceState(owner.uid, s.terminating) for s in by_index.values()},
            ready,
            frozenset(),
        )
        previous = _previous_phases(given.body)
        statuses = [
            dataclasses.replace(
                readiness.worker_status(
                    self.pools.plan(index, slot, spec["services"]),
                    observed,
                    owner.uid,
                    previous.get(index) in (Phase.READY, Phase.DEGRADED),
                ),
                pool=slot.pool_name,
            )
            for index, slot in sorted(by_index.items())
        ]
        outcome.problems = problems
        outcome.status = self._status(given.body, statuses, problems)
        return outcome

    def _converge_claimed(
        self, given: PassInput, by_index: Mapping[int, Slot], secrets: list[Obj], outcome: Outcome
    ) -> None:
        """Claimed workers converge as the environment's own do. On a pass that applies or
        resyncs, each gets its pool's objects and this operator's fences again (an admin-deleted
        NetworkPolicy, quota or LimitRange comes back; a newer operator's fences arrive), and the
        environment's access binding, or loses it once spec.access names nobody; on every other
        pass, a binding the spec asks for is applied (a claim's first pass)."""
        owner, spec = given.owner, given.spec
        subjects = tuple((spec.get("access") or {}).get("subjects") or ())
        role = self.settings.tenants.access_cluster_role
        full = given.depth in (Depth.APPLY, Depth.RESYNC)
        if full:
            missing = self._claimed_incomplete(owner.namespace, by_index, spec["services"])
            for index, slot in sorted(by_index.items()):
                if given.depth is Depth.APPLY or index in missing:
                    self.pools.reapply(slot, owner.namespace, spec["services"], secrets)
                if index in missing:
                    outcome.repaired.append(index)
        for index, slot in sorted(by_index.items()):
            binding = manifests.access_binding(owner, slot.name, index, role, subjects)
            if subjects:
                kubeio.apply(self.api, binding)
            elif full:
                kubeio.delete(self.api, "RoleBinding", binding["metadata"]["name"], slot.name)

    def _claimed_incomplete(
        self, namespace: str, by_index: Mapping[int, Slot], services: list[Mapping[str, Any]]
    ) -> set[int]:
        """The claimed workers missing an object their pool made (its objects carry the pool's
        labels: one list per kind and pool)."""
        present: set[tuple[str, str, str]] = set()
        for pool_uid in {slot.pool_uid for slot in by_index.values()}:
            selector = f"{LABEL_OWNER_UID}={pool_uid}"
            lists = self.threads.map(
                lambda kind, selector=selector: (kind, kubeio.list_labelled(self.api, kind, selector)),
                _NAMESPACED_KINDS,
            )
            for kind, objects in lists:
                present |= {(kind, o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects}
        missing = set()
        for index, slot in by_index.items():
            pool_owner = Owner(namespace, slot.pool_name, slot.pool_uid)
            objects = self.pools.plan(0, slot, services).objects(pool_owner, self.settings.fences, [])
            wanted = {
                (o["kind"], slot.name, o["metadata"]["name"])
                for o in objects
                if o["kind"] in _NAMESPACED_KINDS
            }
            if not wanted <= present:
                missing.add(index)
        return missing

    def _status(
        self,
        body: Mapping[str, Any],
        workers: list[Any],
        problems: list[Problem],
        waiting: bool = False,
        reason: str = "",
    ) -> dict[str, Any]:
        old = body.get("status") or {}
        generation = int(body["metadata"].get("generation", 1))
        conditions = old.get("conditions") or []
        if problems:
            message = "; ".join(str(p) for p in problems)
            reason = reason or ("SecretMissing" if waiting else "SpecInvalid")
            spec_ok = waiting or reason == "ApplyRefused"
            return {
                "observedGeneration": generation,
                "phase": (Phase.PENDING if waiting else Phase.FAILED).value,
                "message": message,
                "readyWorkers": 0,
                "expiresAt": f"{expires_at(body):%Y-%m-%dT%H:%M:%SZ}",
                "workers": old.get("workers") or [],
                "conditions": [
                    readiness.condition(
                        conditions,
                        ConditionType.SPEC_VALID,
                        spec_ok,
                        "Valid" if spec_ok else reason,
                        "" if spec_ok else message,
                        generation,
                    ),
                    readiness.condition(conditions, ConditionType.READY, False, reason, message, generation),
                ],
            }
        phase, message = readiness.environment_phase(workers, old.get("phase"))
        ready = sum(1 for w in workers if w.phase == Phase.READY)
        return {
            "observedGeneration": generation,
            "phase": phase.value,
            "message": message,
            "readyWorkers": ready,
            "expiresAt": f"{expires_at(body):%Y-%m-%dT%H:%M:%SZ}",
            "workers": [w.to_dict() for w in workers],
            "conditions": [
                readiness.condition(conditions, ConditionType.SPEC_VALID, True, "Valid", "", generation),
                readiness.condition(
                    conditions,
                    ConditionType.READY,
                    phase == Phase.READY,
                    "AllWorkersReady" if phase == Phase.READY else f"Workers{phase.value}",
                    message,
                    generation,
                ),
            ],
        }
