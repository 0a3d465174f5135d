"""A worker's connection to its own services: wait for its namespace, forward, export.

A worker waits for its own namespace only, opens a local listener per service on the port the
operator planned, checks each service answers, and exports connection details as environment
variables. Nothing here is computed twice: names, ports and URLs come from the CR's status.
A run inside the cluster (`connect = direct`) forwards nothing: its endpoints are the Services'
DNS names, which the status lists too.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from testenv_api import GROUP, LABEL_RUNNER, PLURAL, VERSION, Phase, plan_ports, service_url
from testenv_api.status import PortStatus, ServiceStatus, WorkerStatus, workers_from_status
from testenv_harness.ground import k8s, kube, localports
from testenv_harness.ground.errors import NotReadyError, PortBusyError, TestEnvError
from testenv_harness.ground.waiting import WaitTimeoutError, wait_for
from testenv_harness.services import catalog, probes
from testenv_harness.worker.handoff import DIRECT, Handoff
from testenv_harness.worker.logs import ServiceLogs

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the tunnel is loaded by the worker that forwards, when it does (see `forward`)
    from testenv_harness.tunnel.portforward import Forwarder

#: What forwarding a worker's services takes in its namespace (the chart's worker-access role).
FORWARD_RIGHTS: list[kube.Right] = [
    ("list", "pods", ""),
    ("watch", "pods", ""),
    ("get", "pods/portforward", ""),
    ("create", "pods/portforward", ""),
]
#: What a restart takes there besides.
RESTART_RIGHTS: list[kube.Right] = [("list", "pods", ""), ("watch", "pods", ""), ("delete", "pods", "")]
#: Seconds a worker keeps asking for its rights while the operator's RoleBinding may be on its way.
RIGHTS_SETTLE_SECONDS = 5.0
#: Where a worker forwards ahead of its Ready (`WorkerConnection.wait_and_forward`): clusters the
#: harness made. (On `local`, kwok marks a pod Ready as it creates it: there is nothing to get ahead of.)
AHEAD_PROVIDERS = frozenset({"kind"})
#: (connect, read) seconds for one read of the environment's status: a worker polls it, and a
#: request the API server never answers must cost one poll, not the worker's whole wait.
STATUS_READ_TIMEOUT = (3.0, 5.0)


def _variable(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


class WorkerConnection:
    """Where one worker's services are, and the local forwards that reach them."""

    def __init__(self, handoff: Handoff, worker: int) -> None:
        self.handoff = handoff
        self.worker = worker
        self.run_id = handoff.run_id
        #: Straight to the Services' DNS names, from a pod in the cluster: no forwards.
        self.direct = handoff.connect == DIRECT
        self.status: WorkerStatus | None = None
        self.forwarder: Forwarder | None = None
        self.timings: dict[str, float] = {}
        #: (what, start, end) in wall-clock seconds of this worker's own steps, for the run's timeline.
        self.spans: list[tuple[str, float, float]] = []

    @functools.cached_property
    def api(self) -> k8s.client.ApiClient:
        """Made on first use: a worker of a kept environment may never need one."""
        return kube.api_client(self.handoff.kubeconfig_path, self.handoff.context or None)

    @functools.cached_property
    def core(self) -> k8s.client.CoreV1Api:
        return k8s.client.CoreV1Api(self.api)

    # -- start-up ---------------------------------------------------------------------------

    def connect(self) -> Self:
        """Wait for this worker, forward its services and export their variables (the plugin's way)."""
        self.wait_and_forward()
        os.environ.update(self.environment())
        return self

    def wait_and_forward(self) -> Self:
        """`wait_ready().forward()`, ahead of the operator where that is safe: on a cluster the
        harness made, the forwards open as soon as the status names the worker's namespace and
        services, and a service whose type has a ping as strong as its pod's readiness probe
        counts as ready once that ping answers through them. The kubelet marks a pod Ready only
        at its next probe (up to a second later) and the operator reports it after that, so the
        worker sees its services answer sooner. (On an existing cluster the identity's rights in
        the worker's namespace arrive with the operator's objects: it waits for Ready there.)"""
        if self.direct or self.handoff.forwarded or self.handoff.provider not in AHEAD_PROVIDERS:
            return self.wait_ready().forward()
        began = time.time()
        self.status = self._wait_for_worker(self.handoff.timeout, planned=True)
        self.spans.append(("waiting for the operator to plan the worker", began, time.time()))
        return self.forward(ahead=True)

    def wait_ready(self) -> Self:
        """Wait until the operator reports this worker Ready; its endpoints are known from then on."""
        began = time.time()
        if self.handoff.forwarded and self.handoff.status is not None:
            self.status = self._claimed_status(self.handoff.status)
            self.spans.append(("its endpoints, from the kept environment's status", began, time.time()))
            return self
        self.status = self._wait_for_worker(self.handoff.timeout)
        self.spans.append(("waiting for the operator to report the worker Ready", began, time.time()))
        return self

    def _claimed_status(self, status: dict[str, Any]) -> WorkerStatus:
        mine = [w for w in workers_from_status(status) if w.index == self.worker]
        if not mine or mine[0].phase != Phase.READY:
            raise self._not_ready("the kept environment's status, as the run claimed it, has it not Ready")
        return mine[0]

    def forward(self, ahead: bool = False) -> Self:
        """Listen on every planned local port of this worker and wait until each service answers
        (connecting directly: only wait until each answers at its Service's DNS name). `ahead`:
        the worker may not be Ready yet (see `wait_and_forward`)."""
        started, began = time.monotonic(), time.time()
        status = self._status()
        if self.handoff.forwarded:  # the keeper's forwards answered when it handed them out
            self.spans.append(("forwarded by the reuse keeper", began, time.time()))
            return self
        try:
            if not self.direct:
                from testenv_harness.tunnel.portforward import Forwarder

                self.require_rights(FORWARD_RIGHTS)
                self.forwarder = Forwarder(self.api, status.namespace)
                for service in status.services:
                    for planned in service.ports:
                        self._listen(service, planned.port, planned.local_port)
                log.debug(
                    "worker %d: listening for %s after %.2fs",
                    self.worker,
                    status.namespace,
                    time.monotonic() - started,
                )
            for service in status.services:
                left = self.handoff.timeout - (time.monotonic() - started)
                host, port = self.endpoint(service.name)
                try:
                    if ahead:
                        self._wait_ahead(service, port, max(left, 1))
                    else:
                        catalog.wait_answering(service.type, port, max(left, 1), host=host)
                except TimeoutError as exc:
                    hint = (
                        f" (a direct connection from this pod: the worker's NetworkPolicy admits pods of "
                        f"namespace {self.handoff.namespace} labelled {LABEL_RUNNER}=true only)"
                        if self.direct
                        else ""
                    )
                    raise self._not_ready(
                        f"{service.name} ({service.type}) does not answer: {exc}{hint}"
                    ) from exc
                self.timings[service.name] = time.monotonic() - started
        except BaseException:
            self.close()
            raise
        way = "answers at its Service's DNS name" if self.direct else "answers through its forward"
        self.spans += [(f"{name} {way}", began, began + took) for name, took in self.timings.items()]
        self.spans.append(("forwards ready" if not self.direct else "services answer", began, time.time()))
        return self

    def _wait_ahead(self, service: ServiceStatus, port: int, timeout: float) -> None:
        """Until `service` answers through its forward as its pod's readiness probe would, or
        (a type without such a ping) until its pod is Ready and it answers its ping."""
        assert self.forwarder is not None
        kind = catalog.of(service.type)
        if kind is not None and kind.ready_ping is not None:
            probes.first_answer(kind.ready_ping, port, timeout, f"{service.name} ({service.type})")
            return
        started, pods = time.monotonic(), self.forwarder.pods
        if not pods.wait(lambda: bool(pods.ready(service.name, timeout=0)), timeout):
            raise WaitTimeoutError(f"a Ready pod of {service.name}", timeout, "none Ready")
        left = timeout - (time.monotonic() - started)
        catalog.wait_answering(service.type, port, max(left, 1))

    def require_rights(self, rights: list[kube.Right]) -> None:
        """On a cluster someone else runs, say which of `rights` in this worker's namespace the
        identity lacks, and what grants them, before a call fails half way (AccessError)."""
        if self.handoff.provider != "existing":
            return  # clusters the harness made: it is their admin
        # The operator binds the access role with the worker's other objects: allow a moment.
        grant = kube.worker_grant(self.handoff.name)
        kube.require_rights(self.api, self.namespace, rights, grant, settle=RIGHTS_SETTLE_SECONDS)

    def _listen(self, service: ServiceStatus, port: int, local_port: int) -> None:
        assert self.forwarder is not None
        try:
            self.forwarder.listen(service.name, port, local_port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            why = (
                f"; it lies in this machine's ephemeral port range ({localports.EPHEMERAL_RANGE_FILE}), "
                "so an outgoing connection may hold it: give the environment (or the pool it claimed "
                "from) a portBase below that range"
                if localports.ephemeral(local_port)
                else ""
            )
            raise PortBusyError(
                f"local port {local_port} ({service.name} of {self.namespace}) is in use: another "
                "process forwards this worker already (a second `testenv forward` for it, or `testenv "
                f"run`, which forwards every worker), or a program of yours listens there{why}"
            ) from exc

    def _environment_object(self) -> dict[str, Any]:
        h = self.handoff
        try:
            body: dict[str, Any] = k8s.client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                GROUP, VERSION, h.namespace, PLURAL, h.name, _request_timeout=STATUS_READ_TIMEOUT
            )
        except k8s.ApiException as exc:
            if exc.status == 404:  # never a bare API error: say what is gone and what to do
                raise self._not_ready(
                    f"the TestEnvironment {h.namespace}/{h.name} is gone from the cluster (deleted, or "
                    "the cluster was re-created while the run went on): run the tests again"
                ) from exc
            raise
        return body

    def _wait_for_worker(self, timeout: float, planned: bool = False) -> WorkerStatus:
        """The worker's status once it is Ready (`planned`: once it names its namespace and
        services, Ready or not)."""
        seen = "no status yet"

        def ready() -> WorkerStatus | None:
            nonlocal seen
            status = self._environment_object().get("status") or {}
            mine = [w for w in workers_from_status(status) if w.index == self.worker]
            if mine and mine[0].phase == Phase.READY:
                return mine[0]
            if planned and mine and mine[0].namespace and mine[0].services and mine[0].phase != Phase.FAILED:
                return mine[0]
            if status.get("phase") == Phase.FAILED:
                raise self._not_ready(f"the environment failed: {status.get('message')}")
            seen = (mine[0].message or f"phase {mine[0].phase}") if mine else status.get("message", seen)
            return None

        try:
            return wait_for(
                ready,
                timeout=timeout,
                what=f"worker {self.worker} to be {'planned' if planned else 'Ready'}",
                interval=0.25,
                seen=lambda: seen,
                retry=(k8s.HTTPError,),  # a read that timed out (STATUS_READ_TIMEOUT): the next one
            )
        except WaitTimeoutError as exc:
            raise self._not_ready(str(exc)) from exc

    def _not_ready(self, what: str) -> NotReadyError:
        namespace = self.status.namespace if self.status else self._namespace_guess()
        lines = [f"kube-testenv worker {self.worker} ({namespace}): {what}"]
        with contextlib.suppress(k8s.ApiException, TypeError):
            for pod in self.core.list_namespaced_pod(namespace).items:
                ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
                lines.append(f"  pod {pod.metadata.name}: {pod.status.phase}, {'' if ready else 'not '}Ready")
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

    def logs(self, host_root: Path | None = None) -> ServiceLogs:
        """This worker's service pods: their state and what they wrote (worker/logs.py). On the local
        cluster their output is the data plane's files, under `host_root` (default: the run's)."""
        namespace = self.status.namespace if self.status is not None else self.find_namespace()
        if self.handoff.provider != "local":
            host_root = None
        elif host_root is None:
            host_root = self.handoff.run_path / "dataplane"
        return ServiceLogs(lambda: self.core, namespace, host_root, kube.worker_grant(self.handoff.name))

    def find_namespace(self) -> str:
        """This worker's namespace as the environment's status names it, Ready or not yet
        (TestEnvError while it names none)."""
        workers = workers_from_status(self._environment_object().get("status"))
        found = next((w.namespace for w in workers if w.index == self.worker and w.namespace), None)
        if found is None:
            where = f"{self.handoff.namespace}/{self.handoff.name}"
            raise TestEnvError(f"{where} names no namespace for worker {self.worker} yet")
        return found

    def _namespace_guess(self) -> str:
        with contextlib.suppress(k8s.ApiException, KeyError, NotReadyError):
            workers = workers_from_status(self._environment_object().get("status"))
            found = next((w.namespace for w in workers if w.index == self.worker and w.namespace), None)
            if found is not None:  # a status that names no namespace for it yet: say so, not StopIteration
                return found
        return "(no namespace yet)"

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

    def services(self) -> list[ServiceStatus]:
        """This worker's services, as its status names them."""
        return list(self._status().services)

    def service(self, name: str) -> ServiceStatus:
        return self._status().service(name)

    def url(self, name: str) -> str:
        """The URL of a service for this process, e.g. redis://localhost:20000 (through the forward)
        or redis://redis.te-ci-run-1a2b3c-w0.svc:6379 (connecting directly)."""
        service = self.service(name)
        return service.cluster_url if self.direct else service.url

    def endpoint(self, name: str) -> tuple[str, int]:
        """(host, port) where this process reaches `name`'s primary port, for sockets of our own."""
        service = self.service(name)
        if self.direct:
            return service.host, service.cluster_port
        return "127.0.0.1", service.primary.local_port

    def host_port(self, name: str, port: str | None = None) -> tuple[str, int]:
        """Where this process reaches `name` (its primary port, or the port named `port`)."""
        service = self.service(name)
        if port is None:
            host, number = self.endpoint(name)
            return ("localhost" if host == "127.0.0.1" else host), number
        for candidate in service.ports:
            if candidate.name == port:
                if self.direct:
                    return service.host, candidate.port
                return "localhost", candidate.local_port
        known = ", ".join(p.name for p in service.ports)
        raise KeyError(f"service {name!r} has no port {port!r} (its ports: {known})")

    def environment(self) -> dict[str, str]:
        """The variables exported for the code under test (documented in docs/harness.md)."""
        endpoints = {s.name: (self.url(s.name), *self.host_port(s.name)) for s in self._status().services}
        return {
            "TESTENV_WORKER": str(self.worker),
            "TESTENV_NAMESPACE": self.namespace,
            "TESTENV_RUN_ID": self.run_id,
            **service_variables(self._status().services, endpoints),
        }


def service_variables(
    services: Sequence[ServiceStatus], endpoints: Mapping[str, tuple[str, str, int]]
) -> dict[str, str]:
    """Each service's `<NAME>_URL/_HOST/_PORT` and the one-of-a-type names (REDIS_URL, ...), from
    (url, host, port) per service name."""
    variables: dict[str, str] = {}
    for service in services:
        key = _variable(service.name)
        url, host, port = endpoints[service.name]
        variables.update({f"{key}_URL": url, f"{key}_HOST": host, f"{key}_PORT": str(port)})
    for kind in catalog.TYPES.values():
        of_kind = [s for s in services if s.type == kind.name]
        if len(of_kind) == 1:
            variables.update(dict.fromkeys(kind.variables, endpoints[of_kind[0].name][0]))
            variables.update({k: v for k, v in kind.defaults.items() if k not in os.environ})
    return variables


def planned_variables(spec: Mapping[str, Any], run_id: str) -> list[dict[str, str]]:
    """Per worker, the variables its forwards will serve, from the local-port plan alone: what a
    worker exports before it collects (modules that build a client at import read them), before
    the environment exists. Its namespace is not known yet: TESTENV_NAMESPACE comes at connect."""
    kinds = {s["name"]: s["type"] for s in spec["services"]}
    envs = {s["name"]: {e["name"]: e.get("value", "") for e in s.get("env") or []} for s in spec["services"]}
    planned = []
    for worker, ports in enumerate(plan_ports(spec)):
        first = {p.service: p.local_port for p in reversed(ports)}
        services = [
            ServiceStatus(
                name,
                kind,
                False,
                "",
                tuple(PortStatus(p.name, p.port, p.local_port) for p in ports if p.service == name),
            )
            for name, kind in kinds.items()
        ]
        endpoints = {
            name: (service_url(kinds[name], "localhost", port, envs[name]), "localhost", port)
            for name, port in first.items()
        }
        planned.append(
            {
                "TESTENV_WORKER": str(worker),
                "TESTENV_RUN_ID": run_id,
                "TESTENV_TOPIC_PREFIX": topic_prefix(run_id, worker),
                **service_variables(services, endpoints),
            }
        )
    return planned


def topic_prefix(run_id: str, worker: int, sep: str = ".") -> str:
    """What `TestEnv.topic` puts before a name: `<run>-w<N><sep>`."""
    return f"{run_id}-w{worker}{sep}"
