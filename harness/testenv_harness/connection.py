"""A worker's connection to its own services: wait for its namespace, forward, export.

A worker waits for its own namespace only, opens a local listener per service on the port the
operator planned, checks each service answers, and exports connection details as environment
variables. Nothing here is computed twice: names, ports and URLs come from the CR's status.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from pathlib import Path
from typing import Any, Self

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from testenv_api import GROUP, PLURAL, VERSION, Phase
from testenv_api.status import ServiceStatus, WorkerStatus, workers_from_status
from testenv_harness import kube, probes
from testenv_harness.errors import NotReadyError, PortBusyError, TestEnvError
from testenv_harness.handoff import Handoff
from testenv_harness.portforward import Forwarder
from testenv_harness.waiting import WaitTimeoutError, wait_for

#: Variables set for a service type when the environment has exactly one service of that type.
_TYPE_VARIABLES = {
    "redis": ("REDIS_URL",),
    "kafka": ("KAFKA_BOOTSTRAP_SERVERS",),
    "localstack": ("AWS_ENDPOINT_URL",),
    "moto": ("AWS_ENDPOINT_URL",),
    "postgres": ("DATABASE_URL",),
    "rabbitmq": ("AMQP_URL",),
    "mosquitto": ("MQTT_URL",),
}
_AWS_DEFAULTS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _variable(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


class WorkerConnection:
    """Where one worker's services are, and the local forwards that reach them."""

    def __init__(self, handoff: Handoff, worker: int) -> None:
        self.handoff = handoff
        self.worker = worker
        self.run_id = handoff.run_id
        self.api = kube.api_client(Path(handoff.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.status: WorkerStatus | None = None
        self.forwarder: Forwarder | None = None
        self.timings: dict[str, float] = {}

    # -- start-up ---------------------------------------------------------------------------

    def connect(self) -> Self:
        """Wait for this worker, forward its services and export their variables (the plugin's way)."""
        self.wait_ready().forward()
        os.environ.update(self.environment())
        return self

    def wait_ready(self) -> Self:
        """Wait until the operator reports this worker Ready; its endpoints are known from then on."""
        self.status = self._wait_for_worker(self.handoff.timeout)
        return self

    def forward(self) -> Self:
        """Listen on every planned local port of this worker and wait until each service answers."""
        started = time.monotonic()
        status = self._status()
        try:
            self.forwarder = Forwarder(self.api, status.namespace)
            for service in status.services:
                for port in service.ports:
                    self._listen(service, port.port, port.local_port)
            for service in status.services:
                left = self.handoff.timeout - (time.monotonic() - started)
                try:
                    probes.wait_answering(service.type, service.primary.local_port, max(left, 1))
                except TimeoutError as exc:
                    raise self._not_ready(f"{service.name} ({service.type}) does not answer: {exc}") from exc
                self.timings[service.name] = time.monotonic() - started
        except BaseException:
            self.close()
            raise
        return self

    def _listen(self, service: ServiceStatus, port: int, local_port: int) -> None:
        assert self.forwarder is not None
        try:
            self.forwarder.listen(service.name, port, local_port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise PortBusyError(
                f"local port {local_port} ({service.name} of {self.namespace}) is in use: another "
                "process forwards this worker already (a second `testenv forward` for it, or `testenv "
                "run`, which forwards every worker), or a program of yours listens there"
            ) from exc

    def _environment_object(self) -> dict[str, Any]:
        h = self.handoff
        body: dict[str, Any] = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
            GROUP, VERSION, h.namespace, PLURAL, h.name
        )
        return body

    def _wait_for_worker(self, timeout: float) -> WorkerStatus:
        seen = "no status yet"

        def ready() -> WorkerStatus | None:
            nonlocal seen
            status = self._environment_object().get("status") or {}
            mine = [w for w in workers_from_status(status) if w.index == self.worker]
            if mine and mine[0].phase == Phase.READY:
                return mine[0]
            if status.get("phase") == Phase.FAILED:
                raise self._not_ready(f"the environment failed: {status.get('message')}")
            seen = (mine[0].message or f"phase {mine[0].phase}") if mine else status.get("message", seen)
            return None

        try:
            return wait_for(
                ready,
                timeout=timeout,
                what=f"worker {self.worker} to be Ready",
                interval=0.25,
                seen=lambda: seen,
            )
        except WaitTimeoutError as exc:
            raise self._not_ready(str(exc)) from exc

    def _not_ready(self, what: str) -> NotReadyError:
        namespace = self.status.namespace if self.status else self._namespace_guess()
        lines = [f"kube-testenv worker {self.worker} ({namespace}): {what}"]
        with contextlib.suppress(ApiException, TypeError):
            for pod in self.core.list_namespaced_pod(namespace).items:
                lines.append(f"  pod {pod.metadata.name}: {pod.status.phase}")
            events = sorted(
                self.core.list_namespaced_event(namespace).items,
                key=lambda e: str(e.last_timestamp or e.event_time or ""),
            )[-8:]
            lines += [f"  event {e.reason}: {e.message}" for e in events]
        problem = self.handoff.run_path / "dataplane" / f"{namespace}.problem"
        if problem.exists():
            lines.append(f"  data plane: {problem.read_text()}")
        lines.append(
            "hint: `kubectl describe testenvironment "
            f"{self.handoff.name} -n {self.handoff.namespace}` shows the operator's view; "
            "raise --testenv-timeout "
            "if the cluster is just slow"
        )
        return NotReadyError("\n".join(lines))

    def _namespace_guess(self) -> str:
        with contextlib.suppress(ApiException, KeyError):
            workers = workers_from_status(self._environment_object().get("status"))
            return next(w.namespace for w in workers if w.index == self.worker)
        return "(unknown namespace)"

    def close(self) -> None:
        if self.forwarder is not None:
            self.forwarder.close()
            self.forwarder = None

    # -- where things are -------------------------------------------------------------------

    @property
    def namespace(self) -> str:
        return self._status().namespace

    def _status(self) -> WorkerStatus:
        if self.status is None:
            raise TestEnvError("TestEnv.connect() has not run")
        return self.status

    def service(self, name: str) -> ServiceStatus:
        return self._status().service(name)

    def url(self, name: str) -> str:
        """The URL of a service on this machine, e.g. redis://localhost:20000."""
        return self.service(name).url

    def host_port(self, name: str, port: str | None = None) -> tuple[str, int]:
        """Where this machine reaches `name` (its primary port, or the port named `port`)."""
        service = self.service(name)
        if port is None:
            return "localhost", service.primary.local_port
        for candidate in service.ports:
            if candidate.name == port:
                return "localhost", candidate.local_port
        known = ", ".join(p.name for p in service.ports)
        raise KeyError(f"service {name!r} has no port {port!r} (its ports: {known})")

    def environment(self) -> dict[str, str]:
        """The variables exported for the code under test (documented in docs/harness.md)."""
        services = self._status().services
        variables = {
            "TESTENV_WORKER": str(self.worker),
            "TESTENV_NAMESPACE": self.namespace,
            "TESTENV_RUN_ID": self.run_id,
        }
        for service in services:
            key = _variable(service.name)
            variables[f"{key}_URL"] = service.url
            variables[f"{key}_HOST"] = "localhost"
            variables[f"{key}_PORT"] = str(service.primary.local_port)
        for kind, names in _TYPE_VARIABLES.items():
            of_kind = [s for s in services if s.type == kind]
            if len(of_kind) == 1:
                for name in names:
                    variables[name] = of_kind[0].url
        if "AWS_ENDPOINT_URL" in variables:
            variables.update({k: v for k, v in _AWS_DEFAULTS.items() if k not in os.environ})
        return variables
