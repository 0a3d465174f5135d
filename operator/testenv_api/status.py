"""The layout of TestEnvironment.status, written by the operator and read by the harness.

The harness never recomputes a namespace name, port or URL: it reads them from here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from testenv_api.services import cluster_port


@dataclasses.dataclass(frozen=True)
class PortStatus:
    name: str
    #: Port of the in-cluster Service (and of the container) the local port forwards to.
    port: int
    #: Planned port the harness binds on the test machine; unique within the environment.
    local_port: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "port": self.port, "localPort": self.local_port}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PortStatus:
        return cls(name=data["name"], port=int(data["port"]), local_port=int(data["localPort"]))


@dataclasses.dataclass(frozen=True)
class ServiceStatus:
    name: str
    type: str
    ready: bool
    #: In-cluster DNS name, `<service>.<namespace>.svc`.
    host: str
    ports: tuple[PortStatus, ...]
    #: URL a test uses through the harness's local forward, e.g. redis://localhost:20000.
    url: str = ""
    #: The pod port of its Toxiproxy's HTTP API when the spec sets `faultProxy: true`, else 0.
    #: Its proxies are named after the Service's ports (services.fault_proxies).
    fault_proxy_port: int = 0

    @property
    def primary(self) -> PortStatus:
        return self.ports[0]

    @property
    def cluster_port(self) -> int:
        """The port a client inside the cluster dials at `host`: the primary port's, except Kafka,
        whose clients there bootstrap on the INTERNAL listener (it advertises `host`)."""
        return cluster_port(self.type, self.primary.port)

    @property
    def cluster_url(self) -> str:
        """`url` as a client inside the cluster uses it: the Service's DNS name, no forward."""
        return self.url.replace(f"localhost:{self.primary.local_port}", f"{self.host}:{self.cluster_port}", 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "ready": self.ready,
            "host": self.host,
            "ports": [p.to_dict() for p in self.ports],
            "url": self.url,
            **({"faultProxyPort": self.fault_proxy_port} if self.fault_proxy_port else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServiceStatus:
        return cls(
            name=data["name"],
            type=data["type"],
            ready=bool(data.get("ready", False)),
            host=data.get("host", ""),
            ports=tuple(PortStatus.from_dict(p) for p in data.get("ports") or []),
            url=data.get("url", ""),
            fault_proxy_port=int(data.get("faultProxyPort") or 0),
        )


@dataclasses.dataclass(frozen=True)
class WorkerStatus:
    index: int
    namespace: str
    phase: str
    services: tuple[ServiceStatus, ...]
    message: str = ""
    #: The TestEnvironmentPool the worker's namespace was claimed from, or "".
    pool: str = ""

    @property
    def ready(self) -> bool:
        return bool(self.services) and all(s.ready for s in self.services)

    def service(self, name: str) -> ServiceStatus:
        for service in self.services:
            if service.name == name:
                return service
        known = ", ".join(s.name for s in self.services) or "none"
        raise KeyError(f"worker {self.index} has no service {name!r} (services: {known})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "namespace": self.namespace,
            "phase": self.phase,
            "message": self.message,
            "services": [s.to_dict() for s in self.services],
            **({"pool": self.pool} if self.pool else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerStatus:
        return cls(
            index=int(data["index"]),
            namespace=data["namespace"],
            phase=data.get("phase", ""),
            message=data.get("message", ""),
            pool=data.get("pool", ""),
            services=tuple(ServiceStatus.from_dict(s) for s in data.get("services") or []),
        )


def workers_from_status(status: dict[str, Any] | None) -> list[WorkerStatus]:
    return [WorkerStatus.from_dict(w) for w in (status or {}).get("workers") or []]
