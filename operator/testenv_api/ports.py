"""The local-port plan: which port on the test machine each worker's service gets.

Ports count up from spec.portBase, worker by worker and, within a worker, in spec order of the
services and their ports. Kafka advertises `localhost:<planned port>`, so the plan must be known
before the broker starts: the operator publishes it in status, and the harness reserves (or
checks) the same range before it creates the environment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from testenv_api.services import SERVICE_PORTS, service_ports

#: spec.portBase when the manifest sets none (the CRD's default).
DEFAULT_PORT_BASE = 20000
MAX_PORT = 65535


@dataclasses.dataclass(frozen=True)
class PlannedPort:
    service: str
    name: str
    port: int
    local_port: int


class PortPlanError(ValueError):
    pass


def _port_count(service: Mapping[str, Any]) -> int:
    """Read leniently: the harness counts before the API server has validated the spec."""
    if service.get("type") == "custom":
        return len((service.get("custom") or {}).get("ports") or ())
    return len(SERVICE_PORTS.get(service.get("type", ""), ()))


def ports_needed(spec: Mapping[str, Any]) -> int:
    """How many consecutive local ports spec.workers workers of spec.services take."""
    return int(spec.get("workers", 1)) * sum(_port_count(s) for s in spec["services"])


def local_ports(spec: Mapping[str, Any]) -> range:
    """Every local port the spec plans, from spec.portBase on."""
    base = int(spec.get("portBase", DEFAULT_PORT_BASE))
    return range(base, base + ports_needed(spec))


def plan_ports(spec: Mapping[str, Any]) -> list[list[PlannedPort]]:
    """One list per worker; PortPlanError naming the largest usable base when 65535 is passed."""
    ports, workers = local_ports(spec), int(spec.get("workers", 1))
    if ports and ports[-1] > MAX_PORT:
        per_worker = len(ports) // workers
        raise PortPlanError(
            f"spec.portBase {ports.start} + {workers} workers x {per_worker} ports needs local ports up to "
            f"{ports[-1]}, past {MAX_PORT}: set spec.portBase to at most {MAX_PORT + 1 - len(ports)}"
        )
    services = [(s["name"], service_ports(s)) for s in spec["services"]]
    numbers = iter(ports)
    return [
        [
            PlannedPort(service, name, port, next(numbers))
            for service, pairs in services
            for name, port in pairs
        ]
        for _ in range(workers)
    ]
