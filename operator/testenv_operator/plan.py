"""From a TestEnvironment spec to the desired state of every worker: pure, no API calls."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from testenv_api.ports import PlannedPort, plan_ports
from testenv_operator import manifests, naming
from testenv_operator.catalog import DEFAULT_IMAGES, ServiceContext, ServicePlan, render_service
from testenv_operator.manifests import Obj, Owner
from testenv_operator.settings import Fences, Settings


@dataclasses.dataclass(frozen=True)
class WorkerPlan:
    index: int
    namespace: str
    services: tuple[ServicePlan, ...]
    ports: tuple[PlannedPort, ...]
    access_subjects: tuple[Mapping[str, Any], ...] = ()
    access_role: str = ""

    def local_port(self, service: str, port: str) -> int:
        return next(p.local_port for p in self.ports if p.service == service and p.name == port)

    def objects(self, owner: Owner, fences: Fences, secrets: list[Obj]) -> list[Obj]:
        """Every namespaced object of this worker (the Namespace itself is applied first, apart)."""
        objects = manifests.guards(owner, self.namespace, self.index, len(self.services), fences)
        objects += [manifests.copied_secret(owner, self.namespace, self.index, s) for s in secrets]
        for service in self.services:
            objects += manifests.workload(owner, self.namespace, self.index, service)
        if self.access_subjects:
            objects.append(
                manifests.access_binding(
                    owner, self.namespace, self.index, self.access_role, self.access_subjects
                )
            )
        return objects


def plan_worker(
    index: int,
    namespace: str,
    services: list[Mapping[str, Any]],
    ports: list[PlannedPort],
    settings: Settings,
    subjects: tuple[Mapping[str, Any], ...] = (),
) -> WorkerPlan:
    """One worker's services rendered for `namespace`, reached on the given planned ports."""
    images = {**DEFAULT_IMAGES, **settings.registries.images}
    rendered = []
    for service in services:
        local = {p.name: p.local_port for p in ports if p.service == service["name"]}
        rendered.append(render_service(service, ServiceContext(namespace, local, images)))
    role = settings.tenants.access_cluster_role
    return WorkerPlan(index, namespace, tuple(rendered), tuple(ports), subjects, role)


def plan_environment(owner: Owner, spec: Mapping[str, Any], settings: Settings) -> list[WorkerPlan]:
    subjects = tuple((spec.get("access") or {}).get("subjects") or ())
    return [
        plan_worker(
            index,
            naming.worker_namespace(owner.namespace, owner.name, owner.uid, index),
            spec["services"],
            ports,
            settings,
            subjects,
        )
        for index, ports in enumerate(plan_ports(spec))
    ]
