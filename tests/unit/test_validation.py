"""What the CRD cannot catch, the operator reports with the field and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from testenv_operator.settings import Settings
from testenv_operator.validation import (
    IMAGE_REFERENCE,
    Sibling,
    environments_over_limit,
    registry_path,
    validate,
)

SETTINGS = Settings(max_workers=8, worker_cpu="2", worker_memory="2Gi")


def _spec(**overrides: Any) -> dict[str, Any]:
    return {"workers": 2, "portBase": 20000, "services": [{"name": "redis", "type": "redis"}], **overrides}


@pytest.mark.parametrize(
    "image",
    [
        "redis",
        "redis:7.2.7",
        "library/redis:7",
        "ghcr.io/acme/api:1.4.2",
        "localhost:5000/a/b:c",
        "registry.example/x@sha256:" + "a" * 64,
    ],
)
def test_valid_image_references(image: str) -> None:
    assert IMAGE_REFERENCE.match(image)


@pytest.mark.parametrize(
    "image", ["Redis:7", "redis:", "redis::7", "-bad/x", "a b", "ghcr.io/acme/api:1.4.2@md5:x"]
)
def test_invalid_image_references(image: str) -> None:
    assert not IMAGE_REFERENCE.match(image)


def test_a_valid_spec_has_no_problems() -> None:
    assert validate(_spec(), SETTINGS) == []


def test_too_many_workers_names_the_operator_limit() -> None:
    (problem,) = validate(_spec(workers=9), SETTINGS)
    assert problem.field == "spec.workers"
    assert "TESTENV_MAX_WORKERS" in problem.message
    assert "lower spec.workers" in problem.message


def test_bad_custom_image_names_the_field_and_an_example() -> None:
    custom = {"image": "ACME/Api:1", "ports": [{"name": "http", "port": 80}]}
    (problem,) = validate(_spec(services=[{"name": "api", "type": "custom", "custom": custom}]), SETTINGS)
    assert problem.field == "spec.services[0].custom.image"
    assert "for example ghcr.io/acme/api:1.4.2" in problem.message


def test_port_clash_in_a_custom_service() -> None:
    custom = {"image": "acme/api:1", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}
    (problem,) = validate(_spec(services=[{"name": "api", "type": "custom", "custom": custom}]), SETTINGS)
    assert problem.field == "spec.services[0].custom.ports"
    assert "port 80 is listed twice" in problem.message


def test_quota_too_small_for_the_services() -> None:
    services = [
        {"name": "kafka", "type": "kafka"},
        {"name": "aws", "type": "localstack"},
        {"name": "r", "type": "redis"},
    ]
    cpu, memory = validate(_spec(services=services), SETTINGS)
    assert cpu.field == memory.field == "spec.services[*].resources.limits"
    assert "cpu limits of 2.5, more than the worker quota of 2 (TESTENV_WORKER_CPU)" in cpu.message
    assert (
        "memory limits of 2304Mi, more than the worker quota of 2Gi (TESTENV_WORKER_MEMORY)" in memory.message
    )


def test_port_plan_overflow() -> None:
    (problem,) = validate(_spec(workers=8, portBase=65530), SETTINGS)
    assert problem.field == "spec.portBase"
    assert "at most 65528" in problem.message


def _by_age(*pairs: tuple[str, int]) -> list[Sibling]:
    return [Sibling(name, workers) for name, workers in pairs]


def test_environment_limit_counts_oldest_first() -> None:
    settings = Settings(max_environments_per_namespace=2)
    siblings = _by_age(("a", 1), ("b", 1), ("c", 1))
    assert environments_over_limit(siblings, "b", settings) is None
    problem = environments_over_limit(siblings, "c", settings)
    assert problem is not None
    assert "TESTENV_MAX_ENVIRONMENTS_PER_NAMESPACE" in problem.message


def test_the_workers_of_a_namespace_are_capped_oldest_first() -> None:
    settings = Settings(max_workers_per_namespace=10)
    siblings = _by_age(("a", 4), ("b", 6), ("c", 1), ("d", 8))
    assert environments_over_limit(siblings, "a", settings) is None
    assert environments_over_limit(siblings, "b", settings) is None  # exactly at the cap
    problem = environments_over_limit(siblings, "c", settings)
    assert problem is not None
    assert problem.field == "spec.workers"
    assert "already ask for 10 workers" in problem.message
    assert "TESTENV_MAX_WORKERS_PER_NAMESPACE" in problem.message
    # The check is per environment: a later, larger one is refused as well; an unknown name is not.
    assert environments_over_limit(siblings, "d", settings) is not None
    assert environments_over_limit(siblings, "gone", settings) is None


def test_a_quantity_kubernetes_cannot_parse_is_a_problem_not_a_crash() -> None:
    services = [{"name": "redis", "type": "redis", "resources": {"limits": {"cpu": "1e1.5"}}}]
    (problem,) = validate(_spec(services=services), SETTINGS)
    assert problem.field == "spec.services[0].resources.limits.cpu"
    assert "not a Kubernetes quantity" in problem.message


@pytest.mark.parametrize(
    ("image", "where"),
    [
        ("redis", "docker.io/library/redis"),
        ("redis:7.2.7", "docker.io/library/redis"),
        ("bitnami/redis:7", "docker.io/bitnami/redis"),
        ("docker.io/redis", "docker.io/library/redis"),
        ("ghcr.io/acme/api:1.4.2", "ghcr.io/acme/api"),
        ("localhost:5000/a/b:c", "localhost:5000/a/b"),
        ("Registry.Example/x@sha256:" + "a" * 64, "registry.example/x"),
    ],
)
def test_registry_path_is_where_a_pull_goes(image: str, where: str) -> None:
    assert registry_path(image) == where


def test_image_overrides_must_come_from_an_allowed_registry() -> None:
    settings = Settings(allowed_registries=("registry.example.com", "ghcr.io/acme"))
    allowed = [
        {"name": "redis", "type": "redis", "image": "registry.example.com/mirror/redis:7"},
        {
            "name": "api",
            "type": "custom",
            "custom": {"image": "ghcr.io/acme/api:1", "ports": [{"name": "p", "port": 80}]},
        },
    ]
    assert validate(_spec(services=allowed), settings) == []
    refused = [
        {"name": "redis", "type": "redis", "image": "redis:7"},
        {
            "name": "api",
            "type": "custom",
            "custom": {"image": "ghcr.io/acme-evil/x:1", "ports": [{"name": "p", "port": 80}]},
        },
    ]
    first, second = validate(_spec(services=refused), settings)
    assert first.field == "spec.services[0].image"
    assert "docker.io/library/redis" in first.message
    assert "TESTENV_ALLOWED_REGISTRIES" in first.message
    assert second.field == "spec.services[1].custom.image"
    # The operator's own default images are the admin's choice, not checked: no image, no problem.
    assert validate(_spec(), settings) == []


def test_every_container_s_ephemeral_storage_must_fit_the_worker_quota() -> None:
    settings = Settings(worker_ephemeral_storage="2Gi")
    two = [{"name": f"r{i}", "type": "redis"} for i in range(2)]
    assert validate(_spec(services=two), settings) == []
    (problem,) = validate(_spec(services=[*two, {"name": "r2", "type": "redis"}]), settings)
    assert problem.field == "spec.services"
    assert "TESTENV_WORKER_EPHEMERAL_STORAGE" in problem.message


def test_a_fault_proxy_is_a_container_of_its_own_for_the_quota() -> None:
    settings = Settings(worker_ephemeral_storage="2Gi", worker_cpu="4", worker_memory="4Gi")
    proxied = [{"name": "r0", "type": "redis", "faultProxy": True}]
    assert validate(_spec(services=proxied), settings) == []
    (storage,) = validate(_spec(services=[*proxied, {"name": "r1", "type": "redis"}]), settings)
    assert storage.field == "spec.services"
    assert "2 services (3 containers)" in storage.message
    # The sidecar's limits count: 500m + 200m of cpu, 256Mi + 64Mi of memory per proxied redis.
    two = [{"name": f"r{i}", "type": "redis", "faultProxy": True} for i in range(2)]
    (cpu,) = validate(_spec(services=two), Settings(worker_cpu="1.2", worker_memory="4Gi"))
    assert "cpu limits of 1.4, more than the worker quota of 1.2" in cpu.message


def test_a_custom_service_behind_a_fault_proxy_cannot_use_its_api_port() -> None:
    custom = {"image": "acme/api:1", "ports": [{"name": "http", "port": 8474}]}
    service = {"name": "api", "type": "custom", "custom": custom}
    assert validate(_spec(services=[service]), SETTINGS) == []
    (problem,) = validate(_spec(services=[{**service, "faultProxy": True}]), SETTINGS)
    assert problem.field == "spec.services[0].custom.ports"
    assert "port 8474 is the fault proxy's API" in problem.message
