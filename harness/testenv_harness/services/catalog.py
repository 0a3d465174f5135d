"""Every built-in type's descriptor, by name: the one place the harness lists them."""

from __future__ import annotations

from testenv_harness.services import aws, kafka, mosquitto, postgres, probes, rabbitmq, redis
from testenv_harness.services.base import Ping, ServiceType

TYPES: dict[str, ServiceType] = {
    kind.name: kind for module in (redis, kafka, aws, postgres, rabbitmq, mosquitto) for kind in module.TYPES
}


def of(service_type: str) -> ServiceType | None:
    """The descriptor of a built-in type; None for `custom` (and any type we do not know)."""
    return TYPES.get(service_type)


def _ping_of(service_type: str) -> Ping | None:
    kind = of(service_type)
    return kind.ping if kind else None


def ping(service_type: str, port: int, timeout: float = 2.0, host: str = "127.0.0.1") -> bool:
    """One attempt: does the service of this type on host:port answer its protocol? (A custom
    service's: does the connection stay open.)"""
    return probes.answers(_ping_of(service_type), port, timeout, host)


def wait_answering(service_type: str, port: int, timeout: float, host: str = "127.0.0.1") -> float:
    """Seconds until the service answered its protocol; WaitTimeoutError (a TimeoutError) otherwise."""
    return probes.wait_answers(_ping_of(service_type), port, timeout, host, service_type)
