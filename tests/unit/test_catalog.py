"""Every service type renders to a sensible container: image, ports, readiness, limits."""

from __future__ import annotations

from typing import Any

import pytest

import testenv_api
from testenv_api import KAFKA_EXTERNAL_PORT, KAFKA_INTERNAL_PORT, primary_port, service_ports
from testenv_operator.catalog import DEFAULT_IMAGES, ServiceContext, render_service
from testenv_operator.manifests import Owner, workload

CTX = ServiceContext("te-ns-w0", {"kafka": 20001, "redis": 20000}, {**DEFAULT_IMAGES})
OWNER = Owner("team", "env", "uid-1")


def _spec(kind: str, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": kind, "type": kind, **extra}
    if kind == "custom":
        spec.setdefault("custom", {"image": "ghcr.io/acme/api:1", "ports": [{"name": "http", "port": 8080}]})
    return spec


@pytest.mark.parametrize("kind", testenv_api.SERVICE_TYPES)
def test_every_type_renders_a_ready_checked_limited_container(kind: str) -> None:
    plan = render_service(_spec(kind), CTX)
    deployment, service = workload(OWNER, CTX.namespace, 0, plan)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"]
    assert "readinessProbe" in container
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert pod["enableServiceLinks"] is False
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert [p["name"] for p in service["spec"]["ports"]][: len(plan.ports)] == [n for n, _ in plan.ports]
    assert plan.ports == tuple(service_ports(_spec(kind)))
    assert plan.url(20000).endswith("localhost:20000") or "localhost:20000/" in plan.url(20000)


def test_redis_keeps_nothing_on_disk() -> None:
    plan = render_service(_spec("redis"), CTX)
    assert plan.image.startswith("redis:7.2.")
    assert plan.args == ("redis-server", "--save", "", "--appendonly", "no")
    assert plan.readiness is not None
    assert plan.readiness.command == ("redis-cli", "ping")
    assert plan.url(20000) == "redis://localhost:20000"


def test_kafka_advertises_the_planned_local_port_outside_and_service_dns_inside() -> None:
    plan = render_service(_spec("kafka"), CTX)
    env = {e["name"]: e["value"] for e in plan.env}
    assert plan.image.startswith("apache/kafka:4.")
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "EXTERNAL://localhost:20001" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert f"INTERNAL://kafka.te-ns-w0.svc:{KAFKA_INTERNAL_PORT}" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert plan.ports == (("kafka", KAFKA_EXTERNAL_PORT),)
    assert plan.readiness is not None
    assert plan.readiness.kind == "tcpSocket"
    assert plan.url(20001) == "localhost:20001"


def test_localstack_is_pinned_loads_eagerly_and_reads_its_token_from_a_secret() -> None:
    spec = _spec(
        "localstack", localstack={"services": ["s3", "sqs"], "authTokenSecretRef": {"name": "ls", "key": "t"}}
    )
    plan = render_service(spec, CTX)
    container = workload(OWNER, CTX.namespace, 0, plan)[0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert plan.image == "localstack/localstack:4.14.0"
    assert env["SERVICES"]["value"] == "s3,sqs"
    assert env["EAGER_SERVICE_LOADING"]["value"] == "1"
    assert env["LOCALSTACK_AUTH_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "ls", "key": "t"}}
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/_localstack/health",
        "port": primary_port("localstack"),
    }


def test_postgres_url_carries_its_credentials() -> None:
    plan = render_service(_spec("postgres"), CTX)
    assert plan.url(20000) == "postgresql://testenv:testenv@localhost:20000/testenv"


def test_custom_uses_its_own_image_ports_and_readiness() -> None:
    custom = {
        "image": "ghcr.io/acme/api:2",
        "args": ["--port", "8080"],
        "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9090}],
        "readiness": {"httpGet": {"path": "/healthz", "port": 9090}},
    }
    plan = render_service(_spec("custom", custom=custom), CTX)
    assert plan.image == "ghcr.io/acme/api:2"
    assert plan.ports == (("http", 8080), ("admin", 9090))
    assert plan.readiness is not None
    assert plan.readiness.to_k8s()["httpGet"] == {"path": "/healthz", "port": 9090}


def test_custom_readiness_defaults_to_tcp_on_the_first_port() -> None:
    plan = render_service(_spec("custom"), CTX)
    assert plan.readiness is not None
    assert (plan.readiness.kind, plan.readiness.port) == ("tcpSocket", 8080)


def test_spec_overrides_win_over_defaults() -> None:
    spec = _spec(
        "redis",
        image="valkey/valkey:8.1",
        resources={"limits": {"memory": "1Gi"}},
        env=[{"name": "X", "value": "1"}],
    )
    plan = render_service(spec, CTX)
    assert plan.image == "valkey/valkey:8.1"
    assert plan.limits == {"cpu": "500m", "memory": "1Gi"}
    assert plan.env[-1] == {"name": "X", "value": "1"}


def test_env_override_replaces_a_default_variable() -> None:
    plan = render_service(_spec("postgres", env=[{"name": "POSTGRES_PASSWORD", "value": "s3cret"}]), CTX)
    passwords = [e for e in plan.env if e["name"] == "POSTGRES_PASSWORD"]
    assert passwords == [{"name": "POSTGRES_PASSWORD", "value": "s3cret"}]
    assert plan.url(1) == "postgresql://testenv:s3cret@localhost:1/testenv"


def test_operator_wide_default_images_apply() -> None:
    ctx = ServiceContext("ns", {}, {**DEFAULT_IMAGES, "redis": "mirror.local/redis:7.2.7"})
    assert render_service(_spec("redis"), ctx).image == "mirror.local/redis:7.2.7"
