"""The local-port plan: which port on the test machine each worker's service gets.

Ports count up from spec.portBase, worker by worker and, within a worker, in spec order of the
services and their ports. Kafka advertises `localhost:<planned port>`, so the plan must be known
before the broker starts; publishing it in status lets the harness bind exactly those ports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

MAX_PORT = 65535


@dataclasses.dataclass(frozen=True)
class PlannedPort:
    service: str
    name: str
    port: int
    local_port: int


class PortPlanError(ValueError):
    pass


def plan_ports(
    base: int, workers: int, services: Sequence[tuple[str, Sequence[tuple[str, int]]]]
) -> list[list[PlannedPort]]:
    """One list per worker; `services` is [(service name, [(port name, port), ...]), ...]."""
    per_worker = sum(len(ports) for _, ports in services)
    last = base + workers * per_worker - 1
    if last > MAX_PORT:
        raise PortPlanError(
            f"spec.portBase {base} + {workers} workers x {per_worker} ports needs local ports up to {last}, "
            f"past {MAX_PORT}: set spec.portBase to at most {MAX_PORT + 1 - workers * per_worker}"
        )
    plan: list[list[PlannedPort]] = []
    for worker in range(workers):
        next_port = base + worker * per_worker
        ports: list[PlannedPort] = []
        for service, service_ports in services:
            for name, port in service_ports:
                ports.append(PlannedPort(service, name, port, next_port))
                next_port += 1
        plan.append(ports)
    return plan
