"""Checks the CRD schema cannot express; each problem names the field and the fix.

The API server already refuses what OpenAPI and CEL can catch (see crds/). What is left depends
on the operator's settings (worker and quota limits) or needs real parsing (image references,
quantities), and ends up in a `SpecValid=False` condition instead of a crash loop.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

from testenv_api.ports import PortPlanError, plan_ports
from testenv_api.services import FAULT_PROXY_ADMIN_PORT, service_ports
from testenv_operator.catalog import (
    DEFAULT_IMAGES,
    FAULT_PROXY_LIMITS,
    ServiceContext,
    ServicePlan,
    render_service,
)
from testenv_operator.manifests import CONTAINER_EPHEMERAL_STORAGE
from testenv_operator.settings import Fences, Limits, Registries, Settings, variable_name

_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REFERENCE = re.compile(rf"^(?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*(?::{_TAG})?(?:@{_DIGEST})?$")


@dataclasses.dataclass(frozen=True)
class Problem:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def registry_path(image: str) -> str:
    """The image's registry and repository, as a pull resolves them (docker.io/library/redis)."""
    name = image.split("@", 1)[0]
    first, _, rest = name.partition("/")
    if not rest or not ("." in first or ":" in first or first == "localhost"):
        first, rest = "docker.io", name  # no registry host: Docker Hub
    if first == "docker.io" and "/" not in rest:
        rest = f"library/{rest}"
    last = rest.rsplit("/", 1)
    last[-1] = last[-1].split(":", 1)[0]  # the tag
    return f"{first.lower()}/{'/'.join(last)}"


def _allowed(image: str, registries: Sequence[str]) -> bool:
    where = registry_path(image)
    return not registries or any(where == r or where.startswith(f"{r}/") for r in registries)


def _images(spec: Mapping[str, Any], settings: Settings) -> list[Problem]:
    registries = settings.registries.allowed_registries
    variable = variable_name(Registries, "allowed_registries")
    problems = []
    for i, service in enumerate(spec["services"]):
        for field, image in (
            ("image", service.get("image")),
            ("custom.image", (service.get("custom") or {}).get("image")),
        ):
            if not image:
                continue
            if not IMAGE_REFERENCE.match(image):
                problems.append(
                    Problem(
                        f"spec.services[{i}].{field}",
                        f"{image!r} is not a valid image reference; use "
                        "[registry/]repository[:tag][@sha256:digest], "
                        "for example ghcr.io/acme/api:1.4.2",
                    )
                )
            elif not _allowed(image, registries):
                problems.append(
                    Problem(
                        f"spec.services[{i}].{field}",
                        f"{image!r} ({registry_path(image)}) is not from a registry this operator allows "
                        f"({', '.join(registries)}; {variable}): use an "
                        "image from one of them, or ask the cluster admin to add its registry",
                    )
                )
    return problems


def _custom_ports(spec: Mapping[str, Any]) -> list[Problem]:
    problems = []
    for i, service in enumerate(spec["services"]):
        numbers = [int(p["port"]) for p in (service.get("custom") or {}).get("ports") or []]
        clashes = sorted({n for n in numbers if numbers.count(n) > 1})
        if clashes:
            problems.append(
                Problem(
                    f"spec.services[{i}].custom.ports",
                    f"port {clashes[0]} is listed twice; give every entry its own port number",
                )
            )
    return problems


def _fault_proxy_ports(spec: Mapping[str, Any]) -> list[Problem]:
    """A fault proxy's API takes pod port 8474: a custom service with `faultProxy` cannot have it."""
    problems = []
    for i, service in enumerate(spec["services"]):
        numbers = [int(p["port"]) for p in (service.get("custom") or {}).get("ports") or []]
        if service.get("faultProxy") and FAULT_PROXY_ADMIN_PORT in numbers:
            problems.append(
                Problem(
                    f"spec.services[{i}].custom.ports",
                    f"port {FAULT_PROXY_ADMIN_PORT} is the fault proxy's API in the pod (faultProxy: true): "
                    "move the container to another port, or drop faultProxy",
                )
            )
    return problems


def _limit(plan: ServicePlan, resource: str) -> Decimal:
    """What one service's pod may use of `resource`, its fault proxy included."""
    total = Decimal(parse_quantity(plan.limits.get(resource, "0")))
    if plan.fault_proxies:
        total += Decimal(parse_quantity(FAULT_PROXY_LIMITS[resource]))
    return total


def _quantities(spec: Mapping[str, Any]) -> list[Problem]:
    """Quantities the CRD's pattern lets through but Kubernetes cannot parse."""
    problems = []
    for i, service in enumerate(spec["services"]):
        for kind, values in (service.get("resources") or {}).items():
            for resource, value in (values or {}).items():
                try:
                    parse_quantity(value)
                except ValueError:
                    problems.append(
                        Problem(
                            f"spec.services[{i}].resources.{kind}.{resource}",
                            f"{value!r} is not a Kubernetes quantity; write it like 500m, 2 or 512Mi",
                        )
                    )
    return problems


def _quota(spec: Mapping[str, Any], settings: Settings) -> list[Problem]:
    ctx = ServiceContext("validation", _dummy_ports(spec), {**DEFAULT_IMAGES, **settings.registries.images})
    plans = [render_service(s, ctx) for s in spec["services"]]
    fences = settings.fences
    problems = []
    for resource, allowed, setting in (
        ("cpu", fences.worker_cpu, variable_name(Fences, "worker_cpu")),
        ("memory", fences.worker_memory, variable_name(Fences, "worker_memory")),
    ):
        wanted = sum((_limit(p, resource) for p in plans), Decimal(0))
        if wanted > Decimal(parse_quantity(allowed)):
            problems.append(
                Problem(
                    "spec.services[*].resources.limits",
                    f"one worker's services need {resource} limits of {_fmt(wanted, resource)}, more than "
                    f"the worker quota of {allowed} ({setting}): lower resources.limits.{resource} "
                    "or drop a service",
                )
            )
    containers = sum(p.containers for p in plans)
    storage = containers * Decimal(parse_quantity(CONTAINER_EPHEMERAL_STORAGE))
    if storage > Decimal(parse_quantity(fences.worker_ephemeral_storage)):
        storage_variable = variable_name(Fences, "worker_ephemeral_storage")
        what = f"{len(plans)} services" + (f" ({containers} containers)" if containers > len(plans) else "")
        problems.append(
            Problem(
                "spec.services",
                f"{what} get {CONTAINER_EPHEMERAL_STORAGE} of ephemeral storage per container, more "
                f"than the worker quota of {fences.worker_ephemeral_storage} "
                f"({storage_variable}): drop a service or ask the cluster admin",
            )
        )
    return problems


def _fmt(value: Decimal, resource: str) -> str:
    if resource == "memory":
        return f"{value / 2**20:.0f}Mi"
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _dummy_ports(spec: Mapping[str, Any]) -> dict[str, int]:
    return {name: 1 for service in spec["services"] for name, _ in service_ports(service)}


def validate(spec: Mapping[str, Any], settings: Settings) -> list[Problem]:
    """Every problem with a spec the API server accepted, or [] when it can be provisioned."""
    problems: list[Problem] = []
    workers = int(spec.get("workers", 1))
    most, variable = settings.limits.max_workers, variable_name(Limits, "max_workers")
    if workers > most:
        problems.append(
            Problem(
                "spec.workers",
                f"{workers} is more than this operator allows ({most}, {variable}): "
                f"lower spec.workers or ask the cluster admin to raise the limit",
            )
        )
    problems += _images(spec, settings)
    problems += _custom_ports(spec)
    problems += _fault_proxy_ports(spec)
    problems += _quantities(spec)
    try:
        plan_ports(spec)
    except PortPlanError as exc:
        problems.append(Problem("spec.portBase", str(exc)))
    if not problems:
        problems += _quota(spec, settings)
    return problems


@dataclasses.dataclass(frozen=True)
class Sibling:
    """One TestEnvironment of a namespace, as the per-namespace limits count it."""

    name: str
    workers: int


def environments_over_limit(by_age: Sequence[Sibling], name: str, settings: Settings) -> Problem | None:
    """Whether `name` is past a per-namespace limit, counting environments oldest first.

    Older environments keep what they have: a new one never pushes an existing one out.
    """
    names = [s.name for s in by_age]
    if name not in names:
        return None
    position = names.index(name)
    limit = settings.limits.max_environments_per_namespace
    if position >= limit:
        return Problem(
            "metadata.namespace",
            f"this namespace already holds {limit} older TestEnvironments, the most this operator allows "
            f"({variable_name(Limits, 'max_environments_per_namespace')}): delete one you no longer use",
        )
    older = sum(s.workers for s in by_age[:position])
    wanted = by_age[position].workers
    cap = settings.limits.max_workers_per_namespace
    if older + wanted > cap:
        variable = variable_name(Limits, "max_workers_per_namespace")
        return Problem(
            "spec.workers",
            f"older TestEnvironments of this namespace already ask for {older} workers, and {wanted} more "
            f"would pass the {cap} one namespace may hold ({variable}): lower "
            "spec.workers or delete an environment you no longer use",
        )
    return None
