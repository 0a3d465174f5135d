"""What each built-in service type exposes: the ports the harness forwards, and Kafka's listeners
and environment (the host data plane and the kind image's start-up training read it too).

The operator renders workloads from these; the harness's local data plane, its tests and the
benchmarks reach the services by them.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

#: Kafka's listeners: EXTERNAL (forwarded to the test machine), INTERNAL (in-cluster DNS), CONTROLLER.
KAFKA_EXTERNAL_PORT = 9094
KAFKA_INTERNAL_PORT = 9092
KAFKA_CONTROLLER_PORT = 9093
#: Fixed KRaft cluster id: each worker's broker is a separate one-node cluster anyway.
KAFKA_CLUSTER_ID = "dGVzdGVudi1rYWZrYS0w"

#: The port(s) each built-in type exposes to the test machine, primary first.
SERVICE_PORTS: Mapping[str, tuple[tuple[str, int], ...]] = {
    "redis": (("redis", 6379),),
    "kafka": (("kafka", KAFKA_EXTERNAL_PORT),),
    "localstack": (("edge", 4566),),
    "moto": (("http", 5000),),
    "postgres": (("postgres", 5432),),
    "rabbitmq": (("amqp", 5672),),
    "mosquitto": (("mqtt", 1883),),
}

#: Ports a type's Service has besides SERVICE_PORTS, for clients inside the cluster only (no
#: planned local port): Kafka's INTERNAL listener, which advertises the Service's DNS name.
CLUSTER_ONLY_PORTS: Mapping[str, tuple[tuple[str, int], ...]] = {
    "kafka": (("internal", KAFKA_INTERNAL_PORT),)
}

#: Every type a spec.services entry may have: the built-in ones, and `custom` (an image of the user's).
SERVICE_TYPES = (*SERVICE_PORTS, "custom")
#: Where a client inside the cluster dials a type whose primary port is not the one it uses there:
#: Kafka's clients bootstrap on the INTERNAL listener (it advertises the Service's name).
_IN_CLUSTER_PORTS = {"kafka": KAFKA_INTERNAL_PORT}

#: The credentials the postgres type's server is made with, unless the spec's env sets others.
POSTGRES_CREDENTIALS = {"POSTGRES_USER": "testenv", "POSTGRES_PASSWORD": "testenv", "POSTGRES_DB": "testenv"}
#: URL schemes of the built-in types (kafka's bootstrap and postgres's are written out below).
_URL_SCHEMES = {
    "redis": "redis",
    "localstack": "http",
    "moto": "http",
    "rabbitmq": "amqp",
    "mosquitto": "mqtt",
}


def service_url(service_type: str, host: str, port: int, env: Mapping[str, str] | None = None) -> str:
    """The URL a client uses for a service of this type at host:port: the operator writes it into
    the status, and the harness exports it before the status exists. `env`: the service's own
    environment (postgres's credentials)."""
    if service_type == "kafka":
        return f"{host}:{port}"
    if service_type == "postgres":
        values = {**POSTGRES_CREDENTIALS, **(env or {})}
        user, password, db = values["POSTGRES_USER"], values["POSTGRES_PASSWORD"], values["POSTGRES_DB"]
        return f"postgresql://{user}:{password}@{host}:{port}/{db}"
    return f"{_URL_SCHEMES.get(service_type, 'tcp')}://{host}:{port}"


def cluster_port(service_type: str, primary: int) -> int:
    """The port a client inside the cluster dials for a service whose primary port is `primary`."""
    return _IN_CLUSTER_PORTS.get(service_type, primary)


def primary_port(service_type: str) -> int:
    """The container (and Service) port of a built-in type's primary port."""
    return SERVICE_PORTS[service_type][0][1]


def service_ports(service: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The forwarded (name, port) pairs of one spec.services entry, primary first."""
    if service["type"] == "custom":
        return [(p["name"], int(p["port"])) for p in service["custom"]["ports"]]
    return list(SERVICE_PORTS[service["type"]])


def service_cluster_ports(service: Mapping[str, Any]) -> list[tuple[str, int]]:
    """Every (name, port) of one spec.services entry's Service: the forwarded ones, then those only
    clients inside the cluster use."""
    return service_ports(service) + list(CLUSTER_ONLY_PORTS.get(service["type"], ()))


# -- the fault proxy (spec.services[].faultProxy) ---------------------------------------------

#: Toxiproxy's HTTP API in the pod of a service with `faultProxy: true`: the sidecar's container
#: port of this number, named FAULT_PROXY_PORT_NAME. The harness forwards it to drive faults.
FAULT_PROXY_ADMIN_PORT = 8474
FAULT_PROXY_PORT_NAME = "toxiproxy"
#: The sidecar's proxies listen from here up inside the pod, skipping the service's own ports
#: and the admin port; the Service's ports send their traffic there.
FAULT_PROXY_LISTEN_BASE = 18474
#: The key of the sidecar's image among the operator's default images (TESTENV_IMAGE_TOXIPROXY,
#: the chart's serviceImages.toxiproxy) and the name of our offline build of it.
FAULT_PROXY_IMAGE_KEY = "toxiproxy"


@dataclasses.dataclass(frozen=True)
class FaultProxy:
    """One Toxiproxy proxy in front of one port of a service, inside its pod."""

    #: Toxiproxy's name of the proxy: the port's name (`redis`, Kafka's `internal`, ...).
    name: str
    #: The Service's port, and the service container's: the proxy's upstream is 127.0.0.1:port.
    port: int
    #: Where the proxy listens in the pod: the Service's targetPort for `port`.
    listen: int


def plan_fault_proxies(ports: Sequence[tuple[str, int]]) -> tuple[FaultProxy, ...]:
    """A proxy for each (name, port) of a Service, on listen ports none of them (nor the admin
    port) uses."""
    taken = {port for _, port in ports} | {FAULT_PROXY_ADMIN_PORT}
    free = (port for port in itertools.count(FAULT_PROXY_LISTEN_BASE) if port not in taken)
    return tuple(FaultProxy(name, port, next(free)) for name, port in ports)


def fault_proxies(service: Mapping[str, Any]) -> tuple[FaultProxy, ...]:
    """The proxies in front of one spec.services entry: one per Service port if it sets
    `faultProxy: true`, else none."""
    if not service.get("faultProxy"):
        return ()
    return plan_fault_proxies(service_cluster_ports(service))


def kafka_environment(namespace: str, service: str, external_port: int) -> dict[str, str]:
    """KRaft combined-mode settings for one broker; EXTERNAL advertises the planned local port."""
    return {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "CLUSTER_ID": KAFKA_CLUSTER_ID,
        "KAFKA_LISTENERS": (
            f"INTERNAL://:{KAFKA_INTERNAL_PORT},EXTERNAL://:{KAFKA_EXTERNAL_PORT},"
            f"CONTROLLER://:{KAFKA_CONTROLLER_PORT}"
        ),
        "KAFKA_ADVERTISED_LISTENERS": (
            f"INTERNAL://{service}.{namespace}.svc:{KAFKA_INTERNAL_PORT},EXTERNAL://localhost:{external_port}"
        ),
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "INTERNAL",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": f"1@localhost:{KAFKA_CONTROLLER_PORT}",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "true",
        "KAFKA_NUM_PARTITIONS": "1",
        # A one-client test broker needs few threads; Kafka's defaults (8 I/O, 3 network, 10
        # background, a log cleaner) cost about 10% of a start's CPU (bench/README.md, kafka_start).
        "KAFKA_NUM_IO_THREADS": "2",
        "KAFKA_NUM_NETWORK_THREADS": "1",
        "KAFKA_BACKGROUND_THREADS": "2",
        "KAFKA_GROUP_COORDINATOR_THREADS": "1",
        "KAFKA_SHARE_COORDINATOR_THREADS": "1",
        "KAFKA_LOG_CLEANER_ENABLE": "false",
    }
