"""What each built-in service type runs: image, ports, arguments, environment, readiness, size.

`render_service` turns one entry of spec.services into a `ServicePlan`, independent of
Kubernetes objects; `manifests.py` turns plans into objects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from testenv_api import (
    CLUSTER_ONLY_PORTS,
    FAULT_PROXY_IMAGE_KEY,
    KAFKA_INTERNAL_PORT,
    POSTGRES_CREDENTIALS,
    SERVICE_PORTS,
    FaultProxy,
    kafka_environment,
    plan_fault_proxies,
    primary_port,
    service_url,
)

DEFAULT_IMAGES: dict[str, str] = {
    "redis": "redis:7.2.7",
    "kafka": "apache/kafka:4.1.1",
    "localstack": "localstack/localstack:4.14.0",
    "moto": "motoserver/moto:5.1.18",
    "postgres": "postgres:17.6",
    "rabbitmq": "rabbitmq:4.1.4",
    "mosquitto": "eclipse-mosquitto:2.0.22",
}
#: The fault proxy a service's `faultProxy: true` puts in its pod, unless the operator's images
#: name another under FAULT_PROXY_IMAGE_KEY (TESTENV_IMAGE_TOXIPROXY).
FAULT_PROXY_IMAGE = "ghcr.io/shopify/toxiproxy:2.5.0"
#: The fault proxy sidecar's requests and limits (Toxiproxy idles at a few MiB; a test's traffic
#: through it is small).
FAULT_PROXY_REQUESTS: Mapping[str, str] = {"cpu": "10m", "memory": "16Mi"}
FAULT_PROXY_LIMITS: Mapping[str, str] = {"cpu": "200m", "memory": "64Mi"}

# Every container drops ALL capabilities and gets back only what its image's start-up needs.
#: An entrypoint that starts as root, hands the data directory to the service user and switches
#: to it (gosu or setpriv, as the official redis, postgres, rabbitmq and mosquitto images do).
#: DAC_OVERRIDE: its `find <data> ! -user <service user>` walks directories that user owns.
STEP_DOWN = ("CHOWN", "DAC_OVERRIDE", "SETGID", "SETUID")
#: Images we know less about (custom ones, LocalStack running as root throughout): the container
#: runtime's usual set without raw sockets, mknod, chroot, audit writes and file capabilities.
GENERIC = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID")


@dataclasses.dataclass(frozen=True)
class Probe:
    kind: str  # tcpSocket | httpGet | exec
    port: int = 0
    path: str = ""
    command: tuple[str, ...] = ()
    #: Seconds between probes: 1 (the kubelet's shortest), so a pod is Ready at most a second
    #: after its service answers; 2 for a probe that starts a program of its own each time.
    period: int = 1

    def to_k8s(self) -> dict[str, Any]:
        if self.kind == "exec":
            handler: dict[str, Any] = {"exec": {"command": list(self.command)}}
        elif self.kind == "httpGet":
            handler = {"httpGet": {"path": self.path, "port": self.port}}
        else:
            handler = {"tcpSocket": {"port": self.port}}
        return {**handler, "periodSeconds": self.period, "failureThreshold": 3, "timeoutSeconds": 2}


@dataclasses.dataclass(frozen=True)
class ServiceContext:
    """What a service's configuration may depend on besides its own spec."""

    namespace: str
    #: Planned local ports of this service in this worker, by port name.
    local_ports: Mapping[str, int]
    images: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class ServicePlan:
    name: str
    type: str
    image: str
    #: (name, port) the harness forwards; the first is primary. Each has a planned local port.
    ports: tuple[tuple[str, int], ...]
    #: Extra ports only reachable inside the cluster (Kafka's INTERNAL listener).
    cluster_ports: tuple[tuple[str, int], ...] = ()
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[dict[str, Any], ...] = ()
    readiness: Probe | None = None
    #: Requests are what a scheduler reserves: test services idle most of the time, so they ask for
    #: little CPU (four workers of redis, kafka and localstack then fit one 2-core kind node).
    requests: Mapping[str, str] = dataclasses.field(default_factory=lambda: {"cpu": "50m", "memory": "64Mi"})
    limits: Mapping[str, str] = dataclasses.field(default_factory=lambda: {"cpu": "500m", "memory": "256Mi"})
    secret_env: tuple[tuple[str, str, str], ...] = ()  # (variable, secret, key) copied into the worker
    #: Linux capabilities added back after dropping ALL (STEP_DOWN, GENERIC, or none).
    capabilities: tuple[str, ...] = ()
    #: With `faultProxy: true`: a Toxiproxy proxy per Service port, in a sidecar of this image.
    fault_proxies: tuple[FaultProxy, ...] = ()
    fault_proxy_image: str = ""

    @property
    def containers(self) -> int:
        """How many containers its pod runs (each gets the LimitRange's ephemeral storage)."""
        return 2 if self.fault_proxies else 1

    def url(self, local_port: int) -> str:
        """What the harness's local forward of the primary port serves (testenv_api's service_url)."""
        env = {e["name"]: e.get("value", "") for e in self.env}
        return service_url(self.type, "localhost", local_port, env)


def _env(values: Mapping[str, str]) -> tuple[dict[str, Any], ...]:
    return tuple({"name": k, "value": v} for k, v in values.items())


def _redis(spec: Mapping[str, Any], ctx: ServiceContext) -> ServicePlan:
    return ServicePlan(
        spec["name"],
        "redis",
        ctx.images["redis"],
        SERVICE_PORTS["redis"],
        args=("redis-server", "--save", "", "--appendonly", "no"),
        readiness=Probe("exec", command=("redis-cli", "ping")),
        capabilities=STEP_DOWN,
    )


def _kafka(spec: Mapping[str, Any], ctx: ServiceContext) -> ServicePlan:
    external = ctx.local_ports[SERVICE_PORTS["kafka"][0][0]]
    return ServicePlan(
        spec["name"],
        "kafka",
        ctx.images["kafka"],
        SERVICE_PORTS["kafka"],
        cluster_ports=CLUSTER_ONLY_PORTS["kafka"],
        env=_env(kafka_environment(ctx.namespace, spec["name"], external)),
        readiness=Probe("tcpSocket", port=KAFKA_INTERNAL_PORT),
        requests={"cpu": "100m", "memory": "512Mi"},
        limits={"cpu": "1", "memory": "1Gi"},
    )


def type_secret_refs(spec: Mapping[str, Any]) -> list[Mapping[str, str]]:
    """The Secret keys a service's type-specific settings read (LocalStack's auth token), besides
    its env's secretKeyRefs."""
    token = (spec.get("localstack") or {}).get("authTokenSecretRef")
    return [token] if token else []


def _localstack(spec: Mapping[str, Any], ctx: ServiceContext) -> ServicePlan:
    settings = spec.get("localstack") or {}
    env = {"EAGER_SERVICE_LOADING": "1"}
    if settings.get("services"):
        env["SERVICES"] = ",".join(settings["services"])
    token = settings.get("authTokenSecretRef")
    secret_env = (("LOCALSTACK_AUTH_TOKEN", token["name"], token["key"]),) if token else ()
    return ServicePlan(
        spec["name"],
        "localstack",
        ctx.images["localstack"],
        SERVICE_PORTS["localstack"],
        env=_env(env),
        readiness=Probe("httpGet", port=primary_port("localstack"), path="/_localstack/health"),
        requests={"cpu": "100m", "memory": "512Mi"},
        limits={"cpu": "1", "memory": "1Gi"},
        secret_env=secret_env,
        capabilities=GENERIC,
    )


def _moto(spec: Mapping[str, Any], ctx: ServiceContext) -> ServicePlan:
    return ServicePlan(
        spec["name"],
        "moto",
        ctx.images["moto"],
        SERVICE_PORTS["moto"],
        readiness=Probe("httpGet", port=primary_port("moto"), path="/moto-api/"),
    )


def _postgres(spec: Mapping[str, Any], ctx: ServiceContext) -> ServicePlan:
    return ServicePlan(
        spec["name"],
        "postgres",
        ctx.images["postgres"],
        SERVICE_PORTS["postgres"],
        env=_env(POSTGRES_CREDENTIALS),
        readiness=Probe("exec", command=("pg_isready", "-U", POSTGRES_CREDENTIALS["POSTGRES_USER"])),
        requests={"cpu": "100m", "memory": "128Mi"},
        limits={"cpu": "1", "memory": "512Mi"},
        # and chmod of directories the postgres user owns, before switching to it
        capabilities=(*STEP_DOWN, "FOWNER"),
    )


def _rabbitmq(spec: Mapping[str, Any], ctx: ServiceContext) -> ServicePlan:
    return ServicePlan(
        spec["name"],
        "rabbitmq",
        ctx.images["rabbitmq"],
        SERVICE_PORTS["rabbitmq"],
        readiness=Probe("exec", command=("rabbitmq-diagnostics", "-q", "check_port_connectivity"), period=2),
        requests={"cpu": "100m", "memory": "256Mi"},
        limits={"cpu": "1", "memory": "512Mi"},
        capabilities=STEP_DOWN,
    )


def _mosquitto(spec: Mapping[str, Any], ctx: ServiceContext) -> ServicePlan:
    return ServicePlan(
        spec["name"],
        "mosquitto",
        ctx.images["mosquitto"],
        SERVICE_PORTS["mosquitto"],
        args=("mosquitto", "-c", "/mosquitto-no-auth.conf"),
        readiness=Probe("tcpSocket", port=primary_port("mosquitto")),
        capabilities=STEP_DOWN,  # mosquitto switches to its own user itself
    )


def _custom(spec: Mapping[str, Any], ctx: ServiceContext) -> ServicePlan:
    custom = spec["custom"]
    ports = tuple((p["name"], int(p["port"])) for p in custom["ports"])
    readiness = custom.get("readiness") or {"tcpSocket": {"port": ports[0][1]}}
    if "exec" in readiness:
        # A team's own command: we cannot know what it costs, so not every second.
        probe = Probe("exec", command=tuple(readiness["exec"]["command"]), period=2)
    elif "httpGet" in readiness:
        probe = Probe("httpGet", port=int(readiness["httpGet"]["port"]), path=readiness["httpGet"]["path"])
    else:
        probe = Probe("tcpSocket", port=int(readiness["tcpSocket"]["port"]))
    return ServicePlan(
        spec["name"],
        "custom",
        custom["image"],
        ports,
        command=tuple(custom.get("command") or ()),
        args=tuple(custom.get("args") or ()),
        readiness=probe,
        capabilities=GENERIC + (("NET_BIND_SERVICE",) if any(port < 1024 for _, port in ports) else ()),
    )


_RENDERERS: dict[str, Callable[[Mapping[str, Any], ServiceContext], ServicePlan]] = {
    "redis": _redis,
    "kafka": _kafka,
    "localstack": _localstack,
    "moto": _moto,
    "postgres": _postgres,
    "rabbitmq": _rabbitmq,
    "mosquitto": _mosquitto,
    "custom": _custom,
}


def render_service(spec: Mapping[str, Any], ctx: ServiceContext) -> ServicePlan:
    """Defaults of the type, then the spec's image, resources and env on top."""
    plan = _RENDERERS[spec["type"]](spec, ctx)
    overrides: dict[str, Any] = {}
    if spec.get("image"):
        overrides["image"] = spec["image"]
    resources = spec.get("resources") or {}
    if resources.get("requests"):
        overrides["requests"] = {**plan.requests, **{k: str(v) for k, v in resources["requests"].items()}}
    if resources.get("limits"):
        overrides["limits"] = {**plan.limits, **{k: str(v) for k, v in resources["limits"].items()}}
    if spec.get("env"):
        mine = {e["name"] for e in spec["env"]}
        overrides["env"] = tuple(e for e in plan.env if e["name"] not in mine) + tuple(spec["env"])
    if spec.get("faultProxy"):
        overrides["fault_proxies"] = plan_fault_proxies(plan.ports + plan.cluster_ports)
        overrides["fault_proxy_image"] = ctx.images.get(FAULT_PROXY_IMAGE_KEY, FAULT_PROXY_IMAGE)
    return dataclasses.replace(plan, **overrides) if overrides else plan
