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
from testenv_api.services import service_ports
from testenv_operator.catalog import DEFAULT_IMAGES, ServiceContext, render_service
from testenv_operator.settings import Settings

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


def _images(spec: Mapping[str, Any]) -> list[Problem]:
    problems = []
    for i, service in enumerate(spec["services"]):
        for field, image in (
            ("image", service.get("image")),
            ("custom.image", (service.get("custom") or {}).get("image")),
        ):
            if image and not IMAGE_REFERENCE.match(image):
                problems.append(
                    Problem(
                        f"spec.services[{i}].{field}",
                        f"{image!r} is not a valid image reference; use "
                        "[registry/]repository[:tag][@sha256:digest], "
                        "for example ghcr.io/acme/api:1.4.2",
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
    ctx = ServiceContext("validation", _dummy_ports(spec), {**DEFAULT_IMAGES, **settings.images})
    plans = [render_service(s, ctx) for s in spec["services"]]
    problems = []
    for resource, allowed, setting in (
        ("cpu", settings.worker_cpu, "TESTENV_WORKER_CPU"),
        ("memory", settings.worker_memory, "TESTENV_WORKER_MEMORY"),
    ):
        wanted = sum((Decimal(parse_quantity(p.limits.get(resource, "0"))) for p in plans), Decimal(0))
        if wanted > Decimal(parse_quantity(allowed)):
            problems.append(
                Problem(
                    "spec.services[*].resources.limits",
                    f"one worker's services need {resource} limits of {_fmt(wanted, resource)}, more than "
                    f"the worker quota of {allowed} ({setting}): lower resources.limits.{resource} "
                    "or drop a service",
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
    if workers > settings.max_workers:
        problems.append(
            Problem(
                "spec.workers",
                f"{workers} is more than this operator allows ({settings.max_workers}, TESTENV_MAX_WORKERS): "
                f"lower spec.workers or ask the cluster admin to raise the limit",
            )
        )
    problems += _images(spec)
    problems += _custom_ports(spec)
    problems += _quantities(spec)
    try:
        plan_ports(spec)
    except PortPlanError as exc:
        problems.append(Problem("spec.portBase", str(exc)))
    if not problems:
        problems += _quota(spec, settings)
    return problems


def environments_over_limit(names_by_age: Sequence[str], name: str, settings: Settings) -> Problem | None:
    """Whether `name` is past the per-namespace limit, counting environments oldest first."""
    limit = settings.max_environments_per_namespace
    if name in names_by_age and names_by_age.index(name) >= limit:
        return Problem(
            "metadata.namespace",
            f"this namespace already holds {limit} older TestEnvironments, the most this operator allows "
            f"(TESTENV_MAX_ENVIRONMENTS_PER_NAMESPACE): delete one you no longer use",
        )
    return None
