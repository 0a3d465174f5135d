"""From what the cluster shows to TestEnvironment.status: pure, no API calls."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from testenv_api import FAULT_PROXY_ADMIN_PORT, ConditionType, Phase
from testenv_api.status import PortStatus, ServiceStatus, WorkerStatus
from testenv_operator.plan import WorkerPlan


@dataclasses.dataclass(frozen=True)
class NamespaceState:
    owner_uid: str | None
    terminating: bool = False


@dataclasses.dataclass(frozen=True)
class Observed:
    """One snapshot of the objects an environment owns, from a few label-selected lists."""

    namespaces: Mapping[str, NamespaceState]
    #: (namespace, service) pairs whose Deployment has a ready, up-to-date pod.
    ready: frozenset[tuple[str, str]]
    #: (kind, namespace, name) of every owned namespaced object that exists.
    present: frozenset[tuple[str, str, str]]


def deployment_ready(obj: Mapping[str, Any]) -> bool:
    """Its newest generation is rolled out and one of its pods is ready."""
    status = obj.get("status") or {}
    current = status.get("observedGeneration", 0) >= obj["metadata"].get("generation", 0)
    return bool(current and status.get("readyReplicas", 0) >= 1 and status.get("updatedReplicas", 0) >= 1)


def from_watches(
    uid: str, namespaces: Iterable[tuple[str, bool]], deployments: Iterable[tuple[str, str, bool]]
) -> Observed:
    """What the operator's watches last saw of an environment: (name, terminating) of each owned
    namespace, (namespace, name, ready) of each owned Deployment."""
    return Observed(
        {name: NamespaceState(uid, terminating) for name, terminating in namespaces},
        frozenset((ns, name) for ns, name, ready in deployments if ready),
        frozenset(("Deployment", ns, name) for ns, name, _ in deployments),
    )


def worker_status(plan: WorkerPlan, observed: Observed, uid: str, was_ready: bool) -> WorkerStatus:
    services = tuple(
        ServiceStatus(
            name=s.name,
            type=s.type,
            ready=(plan.namespace, s.name) in observed.ready,
            host=f"{s.name}.{plan.namespace}.svc",
            ports=tuple(PortStatus(n, p, plan.local_port(s.name, n)) for n, p in s.ports),
            url=s.url(plan.local_port(s.name, s.ports[0][0])),
            fault_proxy_port=FAULT_PROXY_ADMIN_PORT if s.fault_proxies else 0,
        )
        for s in plan.services
    )
    state = observed.namespaces.get(plan.namespace)
    if state is not None and state.owner_uid != uid:
        phase, message = (
            Phase.FAILED,
            (
                f"namespace {plan.namespace} already exists and is not owned by this TestEnvironment "
                f"(owner-uid label: {state.owner_uid or 'none'}); it is left untouched: "
                "delete that namespace "
                "or recreate this TestEnvironment under another name"
            ),
        )
    elif state is None:
        phase, message = Phase.PROVISIONING, "creating the namespace"
    elif state.terminating:
        phase, message = Phase.PROVISIONING, "the namespace is being deleted; it is recreated once it is gone"
    elif all(s.ready for s in services):
        phase, message = Phase.READY, ""
    else:
        waiting = ", ".join(s.name for s in services if not s.ready)
        phase = Phase.DEGRADED if was_ready else Phase.PROVISIONING
        message = f"waiting for {waiting} to become ready"
    return WorkerStatus(plan.index, plan.namespace, phase.value, services, message)


def environment_phase(workers: Sequence[WorkerStatus], previous: str | None) -> tuple[Phase, str]:
    ready = sum(1 for w in workers if w.phase == Phase.READY)
    failed = [w for w in workers if w.phase == Phase.FAILED]
    if failed:
        return Phase.FAILED, f"worker {failed[0].index}: {failed[0].message}"
    if workers and ready == len(workers):
        return Phase.READY, f"all {ready} workers ready"
    if previous in (Phase.READY, Phase.DEGRADED):
        return Phase.DEGRADED, f"{ready}/{len(workers)} workers ready"
    return Phase.PROVISIONING, f"{ready}/{len(workers)} workers ready"


def condition(
    previous: Sequence[Mapping[str, Any]],
    kind: ConditionType,
    ok: bool,
    reason: str,
    message: str,
    generation: int,
) -> dict[str, Any]:
    """A metav1.Condition whose lastTransitionTime only moves when its status does."""
    status = "True" if ok else "False"
    old = next((c for c in previous if c.get("type") == kind), None)
    when = (
        old["lastTransitionTime"]
        if old and old.get("status") == status and old.get("lastTransitionTime")
        else datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    return {
        "type": kind.value,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": when,
    }
