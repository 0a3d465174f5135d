"""Every built-in type's descriptor, by name: the one place the harness lists them."""

from __future__ import annotations

from testenv_harness.services import aws, kafka, mosquitto, postgres, rabbitmq, redis
from testenv_harness.services.base import ServiceType

TYPES: dict[str, ServiceType] = {
    kind.name: kind for module in (redis, kafka, aws, postgres, rabbitmq, mosquitto) for kind in module.TYPES
}


def of(service_type: str) -> ServiceType | None:
    """The descriptor of a built-in type; None for `custom` (and any type we do not know)."""
    return TYPES.get(service_type)
