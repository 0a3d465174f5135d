"""Once per run, in the pytest-xdist controller: cluster, CRD, operator, TestEnvironment, teardown.

This is pytest's SynchronizedBeforeSuite. Workers never create anything; they receive a
`Handoff` and wait for their own namespace only.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import testenv_api
from testenv_api import (
    ANNOTATION_HEARTBEAT,
    FAULT_PROXY_IMAGE_KEY,
    GROUP,
    LABEL_OWNER_UID,
    LABEL_RUN_ID,
    LABEL_SERVICE,
    MAX_WORKERS,
    PLURAL,
    VERSION,
    local_ports,
    ports_needed,
)
from testenv_api.status import WorkerStatus, workers_from_status
from testenv_harness.dataplane import runners
from testenv_harness.dataplane.manager import DataPlane
from testenv_harness.ground import k8s, kube
from testenv_harness.ground.errors import ClusterError, ManifestError
from testenv_harness.ground.localports import bindable, release_block, reserve_block, reserve_ports
from testenv_harness.ground.waiting import WaitTimeoutError, wait_for
from testenv_harness.provision import clusters
from testenv_harness.provision.clusters.base import Cluster, Provider
from testenv_harness.provision.clusters.existing import ExistingProvider
from testenv_harness.provision.operator_process import OperatorProcess
from testenv_harness.run import run_dirs
from testenv_harness.run.options import CONNECT_MODES, RunOptions
from testenv_harness.worker.connection import planned_variables
from testenv_harness.worker.handoff import DIRECT, FORWARD, Handoff, publish

#: What a run does with its TestEnvironment under a cluster's operator (the pipeline role's rights).
_PIPELINE_RIGHTS = tuple((verb, PLURAL, GROUP) for verb in ("create", "get", "list", "patch", "delete"))
HEARTBEAT_SECONDS = 30
HEARTBEAT_TIMEOUT = 300


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of a run's set-up, and how to take it back (None: nothing to take back)."""

    name: str
    do: Callable[[], None]
    undo: Callable[[], None] | None = None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunSession:
    """Sets one run up and tears it down again (also on Ctrl-C)."""

    #: A run's own environment, not a reuse keeper's (`Session.keeper`).
    keeper = ""

    def __init__(self, options: RunOptions, report: Callable[[str], None]) -> None:
        self.options = options
        self.report = report
        self.run_id = uuid.uuid4().hex[:6]
        self.run_dir = run_dirs.make(self.run_id)
        self.cluster: Cluster | None = None
        self.provider: Provider | None = None
        self.api: k8s.client.ApiClient | None = None
        self.operator: OperatorProcess | None = None
        self.dataplane: DataPlane | None = None
        self.name = ""
        self.uid = ""
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ready_at: dict[int, float] = {}
        self.handoff: Handoff | None = None
        self._spec: dict[str, Any] | None = None
        #: The set-up steps taken so far, in order: `stop` takes them back, last first.
        self.done: list[Step] = []
        self._connect = FORWARD
        #: How the environment's deletion went (set by taking the environment step back).
        self._background = ""
        self._left: list[str] = []
        #: When each set-up step and its undo ran (wall clock), and each host process's start: the
        #: plugin's run timeline draws them (frontends/timeline.py says what an event holds).
        self.timeline: list[dict[str, Any]] = []

    def _record(self, name: str, start: float, kind: str = "set-up", **more: Any) -> None:
        """One step of the run (or its undo), from `start` until now, as a timeline event."""
        event = {"row": None, "lane": "run", "name": name, "start": start, "end": time.time(), "kind": kind}
        self.timeline.append(event | more)

    @classmethod
    def reclaim(
        cls, options: RunOptions, handoff: Handoff, uid: str, operator: str, report: Callable[[str], None]
    ) -> str:
        """Tear down the environment of a run whose process died (`kill -9`), as its `stop` would have.

        Its own operator died with it, so `operator="subprocess"` starts one for the run's namespace
        until the environment's finalizer is done. Returns `stop`'s summary.
        """
        session = cls(options, report)
        shutil.rmtree(session.run_dir, ignore_errors=True)
        session.run_id, session.run_dir = handoff.run_id, handoff.run_path
        session.cluster = Cluster(
            handoff.provider, options.cluster_name, handoff.kubeconfig_path, context=handoff.context or None
        )
        session.api = kube.api_client(session.cluster.kubeconfig, session.cluster.context)
        session.name, session.uid = handoff.name, uid
        session.run_dir.mkdir(parents=True, exist_ok=True)
        session.done = [session._operator_step(), session._environment_step()]
        try:
            if operator == "subprocess":
                session._start_operator()
        finally:
            summary = session.stop()
            session.remove_run_dir()
        return summary

    # -- set-up -----------------------------------------------------------------------------

    def _provider(self) -> Provider:
        return clusters.choose(
            self.options.provider,
            self.options.cluster_name,
            kubeconfig=self.options.kubeconfig,
            context=self.options.context,
            report=self.report,
        )

    def steps(self) -> list[Step]:
        """The run's set-up, in order; each step that leaves something behind knows how to undo it."""
        return [
            Step("cluster", self._bring_cluster_up),
            self._operator_step(),
            self._environment_step(),
            Step("data plane", self._start_dataplane, undo=self._stop_dataplane),
            Step("progress", self._start_watchers),  # they end with `stop`'s event
            Step("handoff", self._publish_handoff),
        ]

    def _operator_step(self) -> Step:
        return Step("operator", self._bring_operator, undo=self._stop_operator)

    def _environment_step(self) -> Step:
        return Step("environment", self._create_environment_as_chosen, undo=self._take_environment_down)

    def start(self) -> Handoff:
        """Take every set-up step not taken yet (`start_ahead` may have taken the first ones);
        whatever step fails, `stop` takes back exactly those done."""
        taken = {step.name for step in self.done}
        for step in self.steps():
            if step.name not in taken:
                self._take(step)
        assert self.handoff is not None
        return self.handoff

    def start_ahead(self) -> None:
        """Take the steps that make no environment ahead of `start`, while the test runner starts
        its workers and collects: reusing the cluster (only one that exists already) and starting
        the operator (on a cluster of ours, after making the run's namespace if it is missing: see
        `_make_namespace`). If no test needs the environment after all, `stop` ends the operator
        (the namespace stays, as after any run); the environment itself waits for `start`. Does
        nothing where the cluster does not exist yet."""
        self.provider = self._provider()
        if not self.provider.exists():
            return
        for step in self.steps():
            if step.name not in ("cluster", "operator"):
                return
            self._take(step)

    def _take(self, step: Step) -> None:
        began = time.time()
        try:
            step.do()
        except BaseException:
            self._record(step.name, began, outcome="failed")
            raise
        self._record(step.name, began)
        self.done.append(step)

    def _bring_cluster_up(self) -> None:
        self.provider = self.provider or self._provider()
        services = self.options.services
        if self.provider.simulated_pods:
            reason = runners.cannot_serve(s.get("type", "") for s in services)
            if reason := reason or runners.cannot_proxy(services):
                raise ManifestError(reason)
        self.cluster = self.provider.up()
        if isinstance(self.provider, clusters.KindProvider):
            ours = self.provider.service_images({s.get("type", "") for s in services if not s.get("image")})
            self.provider.unpack_ahead(sorted(set(ours.values())))
        self.api = kube.api_client(self.cluster.kubeconfig, self.cluster.context)
        if not self.options.namespace:
            default = (
                self.provider.default_namespace()
                if isinstance(self.provider, ExistingProvider)
                else "default"
            )
            self.options = dataclasses.replace(self.options, namespace=default)
        self._connect = self._connect_mode()

    def _operator_mode(self) -> str:
        assert self.provider is not None
        chosen = self.options.operator
        return self.provider.default_operator if chosen == "auto" else chosen

    def _bring_operator(self) -> None:
        assert self.api is not None
        if self._operator_mode() == "subprocess":
            kube.install_crd(self.api)
            self._make_namespace()
            self._start_operator()
        else:
            self._check_operator_served()

    def _stop_operator(self) -> None:
        """Our operator stops, unless it finishes the deletion in the background or the run keeps all."""
        if self.operator is not None and not self.options.keep and not self._background:
            self.operator.stop()

    def _create_environment_as_chosen(self) -> None:
        self._create_environment(grant_self=self._operator_mode() == "cluster")

    def _take_environment_down(self) -> None:
        if self.api is None or not self.name or self.options.keep or not self._delete_environment():
            return
        self._background = "" if self.options.wait_teardown else self._hand_deletion_over()
        if not self._background:
            self._left = self._wait_deleted()

    def _start_dataplane(self) -> None:
        assert self.api is not None
        assert self.provider is not None
        if self.provider.simulated_pods:
            self.dataplane = DataPlane(self.api, self.uid, self.run_dir / "dataplane", self.report).start()

    def _stop_dataplane(self) -> None:
        if self.dataplane is not None:  # the services are not needed any more: end them now
            self.dataplane.close()

    def _start_watchers(self) -> None:
        for target in (self._heartbeat, self._watch_progress):
            thread = threading.Thread(target=target, daemon=True, name=target.__name__)
            thread.start()
            self._threads.append(thread)

    def _publish_handoff(self) -> None:
        assert self.cluster is not None
        self.handoff = Handoff(
            kubeconfig=str(self.cluster.kubeconfig or ""),
            context=self.cluster.context or "",
            connect=self._connect,
            namespace=self.options.namespace,
            name=self.name,
            run_id=self.run_id,
            run_dir=str(self.run_dir),
            provider=self.cluster.provider,
            timeout=self.options.timeout,
        )
        publish(self.run_dir, self.handoff)

    def plan(self) -> list[dict[str, str]]:
        """Reserve this run's local ports now, before anything starts, and return each worker's
        variables from that plan, so workers can export them before they collect. [] where they
        cannot be known yet: connecting directly, the endpoints are namespaces not yet made."""
        connect = self.options.connect
        if connect == DIRECT or (
            connect == "auto"
            and self.options.provider == "existing"
            and ExistingProvider(self.options.kubeconfig, self.options.context).in_cluster
        ):
            return []
        return planned_variables(self._planned_spec(), self.run_id)

    def _planned_spec(self) -> dict[str, Any]:
        """The manifest's spec with this run's workers and local ports (reserved on first use)."""
        if self._spec is not None:
            return self._spec
        spec = copy.deepcopy(self.options.manifest.get("spec") or {})
        spec["workers"] = self.options.workers
        if "portBase" not in spec:
            try:
                spec["portBase"] = reserve_block(ports_needed(spec), self.run_id)
            except OSError as exc:
                raise ClusterError(str(exc)) from exc
        else:
            ports = local_ports(spec)
            busy = [p for p in ports if not bindable(p)]
            if busy:
                raise ManifestError(
                    f"spec.portBase {ports.start} plans local ports {ports.start}-{ports[-1]}, "
                    f"but {busy[0]} is in use (another run on this "
                    "machine?): drop spec.portBase from the manifest to let kube-testenv pick free ports, "
                    "or choose another base"
                )
        self._spec = spec
        return spec

    def _connect_mode(self) -> str:
        """forward or direct: `auto` connects directly exactly from a pod of the cluster itself."""
        assert self.cluster is not None
        assert self.provider is not None
        choice = self.options.connect
        if choice not in CONNECT_MODES:
            raise ManifestError(f"connect = {choice!r}: use one of {', '.join(CONNECT_MODES)}")
        if choice == "auto":
            choice = DIRECT if self.cluster.kubeconfig is None else FORWARD
        if choice == DIRECT and self.provider.simulated_pods:
            raise ManifestError(
                f"connect = direct needs the run to be inside a cluster with a pod network; the "
                f"{self.provider.name} cluster only simulates pods: use connect = forward (or auto)"
            )
        if choice == DIRECT:
            self.report("connecting directly to each worker's Services (no port-forwards)")
        return choice

    def _check_operator_served(self) -> None:
        """The cluster serves TestEnvironments (an operator is installed) and this identity may
        manage them here. Needs nothing cluster-scoped: the chart's pipeline role is enough."""
        assert self.api is not None
        namespace = self.options.namespace
        try:
            k8s.client.CustomObjectsApi(self.api).list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, limit=1
            )
        except k8s.ApiException as exc:
            if exc.status == 403:
                raise kube.refusal(exc, "list", PLURAL, namespace, kube.pipeline_grant(namespace)) from exc
            if exc.status == 404:
                raise ClusterError(
                    f"the cluster does not serve {PLURAL}.{GROUP} (no {testenv_api.CRD_NAME} CRD), so no "
                    "operator is installed there: an admin installs it with `helm install testenv-operator "
                    "charts/testenv-operator` (docs/shared-ci-cluster.md), or pass "
                    "--testenv-operator=subprocess to run one for this run"
                ) from exc
            raise ClusterError(f"listing {PLURAL} in {namespace} failed: {exc.status} {exc.reason}") from exc
        kube.require_rights(self.api, namespace, list(_PIPELINE_RIGHTS), kube.pipeline_grant(namespace))

    def _grant_self(self, spec: dict[str, Any]) -> None:
        """Name this run's identity in spec.access, so the cluster's operator lets it use its workers
        (the manifest's own subjects are kept)."""
        assert self.api is not None
        try:
            identity = kube.whoami(self.api)
        except k8s.ApiException as exc:
            self.report(
                f"could not ask the cluster who this run is (SelfSubjectReview: {exc.status} {exc.reason}); "
                "if its workers refuse it, name it in the manifest's spec.access.subjects"
            )
            return
        subject = identity.subject()
        if subject is None:
            return  # a system: user (e.g. system:admin) holds cluster-wide rights already
        subjects = spec.setdefault("access", {}).setdefault("subjects", [])
        namespace = self.options.namespace
        key = (subject["kind"], subject["name"], subject.get("namespace", namespace))
        if any((s.get("kind"), s.get("name"), s.get("namespace", namespace)) == key for s in subjects):
            return
        subjects.append(subject)
        self.report(f"{identity} may use its workers (added to spec.access.subjects)")

    def _make_namespace(self) -> None:
        """The run's namespace, on a cluster of ours (an `existing` cluster's is its owners').

        Made before our operator starts: kopf lists the namespaces it serves once, then watches
        them in a second list-and-watch whose listing it ignores, so a namespace created between
        the two is never served (no TestEnvironment there is ever seen). An operator that took
        seconds to import hid that; one that starts in under a second met it in 1 run of 8."""
        if isinstance(self.provider, ExistingProvider):
            return
        assert self.api is not None
        with contextlib.suppress(k8s.ApiException):  # it exists already
            k8s.call(
                self.api, "POST", "/api/v1/namespaces", body={"metadata": {"name": self.options.namespace}}
            )

    def _start_operator(self) -> None:
        """Our own operator, serving only this run's namespace; a controller killed with -9 takes it along."""
        assert self.cluster is not None
        self.operator = OperatorProcess(
            self.cluster.kubeconfig,
            self.run_dir / "operator.log",
            TESTENV_NAMESPACES=self.options.namespace,
            TESTENV_MAX_WORKERS=str(MAX_WORKERS),
            TESTENV_RESYNC_SECONDS="5",
            # The operator's TESTENV_IMAGE_<FAULT_PROXY_IMAGE_KEY>; empty: its default (or the user's).
            TESTENV_IMAGE_TOXIPROXY=self._fault_proxy_image()
            or os.environ.get("TESTENV_IMAGE_TOXIPROXY", ""),
        )
        self.operator.start()

    def _fault_proxy_image(self) -> str:
        """The provider's own image of the fault proxy sidecar (kind on our node: our offline build),
        when a service asks for one (`faultProxy: true`); "" for the operator's default."""
        if self.provider is None or not any(s.get("faultProxy") for s in self.options.services):
            return ""
        return self.provider.service_images({FAULT_PROXY_IMAGE_KEY}).get(FAULT_PROXY_IMAGE_KEY, "")

    def _create_environment(self, grant_self: bool = False) -> None:
        assert self.api is not None
        assert self.provider is not None
        body = copy.deepcopy(self.options.manifest)
        body["spec"] = spec = copy.deepcopy(self._planned_spec())
        if grant_self:
            self._grant_self(spec)
        self._use_provider_images(spec)
        lifetime = spec.setdefault("lifetime", {})
        ttl = lifetime.get("ttlSeconds")
        # The CRD refuses a heartbeat timeout longer than the TTL: a short TTL bounds the default.
        limit = min(HEARTBEAT_TIMEOUT, ttl) if isinstance(ttl, int) and ttl > 0 else HEARTBEAT_TIMEOUT
        lifetime.setdefault("heartbeatTimeoutSeconds", limit)
        meta = body.setdefault("metadata", {})
        self.name = f"{meta.get('name', 'run')}-{self.run_id}"[:63]
        meta.update(name=self.name, namespace=self.options.namespace)
        meta.setdefault("labels", {})[LABEL_RUN_ID] = self.run_id
        meta.setdefault("annotations", {})[ANNOTATION_HEARTBEAT] = _now()
        if self._operator_mode() != "subprocess":  # the operator step made it before our operator started
            self._make_namespace()
        try:
            created = k8s.client.CustomObjectsApi(self.api).create_namespaced_custom_object(
                GROUP, VERSION, self.options.namespace, PLURAL, body, field_validation="Strict"
            )
        except k8s.ApiException as exc:
            namespace = self.options.namespace
            if exc.status in (400, 422):  # the manifest itself is invalid
                raise ManifestError(f"the API server refused the TestEnvironment: {exc.body}") from exc
            if exc.status == 403:
                raise kube.refusal(exc, "create", PLURAL, namespace, kube.pipeline_grant(namespace)) from exc
            if exc.status == 404:
                raise ClusterError(
                    f"namespace {namespace!r} does not exist: create it (an admin, on a shared cluster), or "
                    "choose another with --testenv-namespace"
                ) from exc
            raise ClusterError(
                f"creating the TestEnvironment in {namespace} failed: {exc.status} {exc.reason}"
            ) from exc
        self.uid = created["metadata"]["uid"]
        names = ", ".join(f"{s['name']} ({s['type']})" for s in spec["services"])
        self.report(
            f"environment {self.options.namespace}/{self.name}: {self.options.workers} worker(s) x {names}, "
            f"local ports from {spec['portBase']}"
        )

    def _use_provider_images(self, spec: dict[str, Any]) -> None:
        """Services without an image of their own get the provider's (kind: our offline builds)."""
        assert self.provider is not None
        images = self.provider.service_images({s["type"] for s in spec["services"]})
        used = set()
        for service in spec["services"]:
            if not service.get("image") and service["type"] in images:
                service["image"] = images[service["type"]]
                used.add(service["image"])
        if fault_proxy := self._fault_proxy_image():
            used.add(fault_proxy)
        self.provider.load_images(sorted(used))
        if isinstance(self.provider, clusters.KindProvider):
            named = {s.get("image") or (s.get("custom") or {}).get("image") for s in spec["services"]} - used
            if loaded := self.provider.load_local(sorted(i for i in named if i)):
                self.report(f"loaded {', '.join(loaded)} from the local Docker engine into the kind node")

    # -- while tests run --------------------------------------------------------------------

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):
                assert self.api is not None
                k8s.client.CustomObjectsApi(self.api).patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    self.options.namespace,
                    PLURAL,
                    self.name,
                    {"metadata": {"annotations": {ANNOTATION_HEARTBEAT: _now()}}},
                    _content_type="application/merge-patch+json",
                )

    def _watch_progress(self) -> None:
        """Report each worker as it becomes ready, with how long each of its services took."""
        assert self.api is not None
        objects = k8s.client.CustomObjectsApi(self.api)
        while not self._stop.wait(0.3) and len(self.ready_at) < self.options.workers:
            with contextlib.suppress(k8s.ApiException):
                body = objects.get_namespaced_custom_object(
                    GROUP, VERSION, self.options.namespace, PLURAL, self.name
                )
                for worker in workers_from_status(body.get("status")):
                    if worker.index in self.ready_at or not worker.ready or not self._served(worker):
                        continue
                    took = time.monotonic() - self.started
                    self.ready_at[worker.index] = took
                    self._record_host_processes(worker)
                    self._reserve_claimed(worker)
                    self.report(
                        f"worker {worker.index} ready in {took:.1f}s{self._service_times(worker.namespace)}"
                    )

    def _reserve_claimed(self, worker: WorkerStatus) -> None:
        """A worker claimed from a pool forwards the pool's ports, not this run's planned block:
        reserve those too, so a run starting meanwhile on this machine plans around them."""
        planned = local_ports(self._spec) if self._spec is not None else range(0)
        ports = [p.local_port for s in worker.services for p in s.ports if p.local_port not in planned]
        if not ports:
            return
        if clash := reserve_ports(self.run_id, ports, f"w{worker.index}"):
            self.report(
                f"worker {worker.index} forwards local ports {', '.join(map(str, clash))} of its pool, which "
                "another run on this machine reserved too: give the pool (or that run) another spec.portBase"
            )

    def _host_ready_times(self, namespace: str) -> list[tuple[str, float]]:
        """(service, seconds until its host process listened) of each pod the data plane serves."""
        assert self.dataplane is not None
        return [
            (s.pod.name.rsplit("-", 2)[0], s.ready_after)
            for s in list(self.dataplane.served.values())
            if s.pod.namespace == namespace and s.ready_after is not None
        ]

    def _record_host_processes(self, worker: WorkerStatus) -> None:
        """On a simulated data plane: when each of the worker's host processes started and listened."""
        if self.dataplane is None:
            return
        wall = time.time() - time.monotonic()
        for served in list(self.dataplane.served.values()):
            if served.pod.namespace == worker.namespace and served.ready_after is not None:
                self.timeline.append(
                    {
                        "row": worker.index,
                        "lane": served.pod.name.rsplit("-", 2)[0],
                        "name": f"host process of pod {served.pod.name} listening",
                        "start": wall + served.started,
                        "end": wall + served.started + served.ready_after,
                        "kind": "host",
                    }
                )

    def _served(self, worker: WorkerStatus) -> bool:
        """Every service of the worker has a host process that listens (on a simulated data plane);
        a service whose pod the data plane has not picked up yet is not served."""
        if self.dataplane is None:
            return True
        listening = {name for name, _ in self._host_ready_times(worker.namespace)}
        return all(service.name in listening for service in worker.services)

    def _service_times(self, namespace: str) -> str:
        if self.dataplane is not None:
            times = sorted(self._host_ready_times(namespace))
        else:
            times = sorted(self._pod_ready_times(namespace).items())
        return " (" + ", ".join(f"{name} {took:.1f}s" for name, took in times) + ")" if times else ""

    def _pod_ready_times(self, namespace: str) -> dict[str, float]:
        """Per service: from its pod's creation to the pod's Ready condition (real kubelets)."""
        assert self.api is not None
        times: dict[str, float] = {}
        with contextlib.suppress(k8s.ApiException):
            for pod in k8s.client.CoreV1Api(self.api).list_namespaced_pod(namespace).items:
                service = (pod.metadata.labels or {}).get(LABEL_SERVICE)
                ready = next(
                    (c for c in (pod.status.conditions or []) if c.type == "Ready" and c.status == "True"),
                    None,
                )
                if service and ready is not None and ready.last_transition_time is not None:
                    took = (ready.last_transition_time - pod.metadata.creation_timestamp).total_seconds()
                    times[service] = max(times.get(service, 0.0), took)
        return times

    def wait_reported(self, timeout: float) -> None:
        """Block until every worker was reported ready (or `timeout`): for a run without xdist,
        whose only process runs the tests itself and whose output pytest captures meanwhile."""
        progress = next((t for t in self._threads if t.name == "_watch_progress"), None)
        if progress is not None:
            progress.join(timeout)

    # -- teardown ---------------------------------------------------------------------------

    def stop(self) -> str:
        """Delete the environment (unless kept) and stop what the run started; returns a summary.

        The namespaces go in the background unless `wait_teardown`: the cluster's operator deletes
        them, or this run's own operator, which then exits by itself. A second call does nothing
        and returns "". The run folder stays until `remove_run_dir`: workers may still read a
        published set-up failure from it.
        """
        if self._stop.is_set():
            return ""
        self._stop.set()
        started = time.monotonic()
        failed: Exception | None = None
        try:
            for step in reversed(self.done):  # what was done, last first; each undo is tried
                if step.undo is None:
                    continue
                began = time.time()
                try:
                    step.undo()
                    self._record(f"teardown: {step.name}", began, kind="teardown")
                except Exception as exc:
                    self._record(f"teardown: {step.name}", began, kind="teardown", outcome="failed")
                    failed = failed or exc
                    self.report(f"taking back the {step.name} step failed: {exc}")
        finally:
            self.done = []
            release_block(self.run_id)
        if failed is not None:
            raise failed
        left, background = self._left, self._background
        ready = f"{len(self.ready_at)}/{self.options.workers} workers ready"
        if self.ready_at:
            ready += f" (slowest {max(self.ready_at.values()):.1f}s)"
        if self.options.keep:
            return f"{ready}; kept {self.options.namespace}/{self.name} and its namespaces (--testenv-keep)"
        took = f"{time.monotonic() - started:.1f}s"
        if background:
            return f"{ready}; stopped in {took}, {background}"
        gone = "all namespaces deleted" if not left else f"namespaces still present: {', '.join(left)}"
        return f"{ready}; torn down in {took}, {gone}"

    def _hand_deletion_over(self) -> str:
        """Leave the deletion to an operator; what the summary says of it ("" if none took it)."""
        if self.operator is None:
            return "the cluster's operator deletes the namespaces in the background"
        if not self.operator.finish_in_background():
            return ""
        assert self.operator.proc is not None
        return (
            f"the namespaces are deleted in the background by operator pid {self.operator.proc.pid}, "
            "which exits when done (--testenv-wait-teardown waits for it)"
        )

    def remove_run_dir(self) -> None:
        if self.options.keep:
            run_dirs.keep(self.run_dir)
        else:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _delete_environment(self) -> bool:
        """Ask for the environment's deletion: False if it was not there (or could not be asked)."""
        assert self.api is not None
        try:
            k8s.client.CustomObjectsApi(self.api).delete_namespaced_custom_object(
                GROUP, VERSION, self.options.namespace, PLURAL, self.name
            )
        except k8s.ApiException as exc:
            if exc.status == 404:
                return False
            self.report(f"deleting {self.options.namespace}/{self.name} failed: {exc.status} {exc.reason}")
        return True

    def _wait_deleted(self, timeout: float = 120) -> list[str]:
        left: list[str] = []

        def gone() -> bool:
            nonlocal left
            left = self._left_behind()
            return not left

        with contextlib.suppress(WaitTimeoutError):
            wait_for(gone, timeout=timeout, what=f"{self.name} and its namespaces to be gone", interval=0.3)
        return left

    def _left_behind(self) -> list[str]:
        assert self.api is not None
        owned = [("labelSelector", f"{LABEL_OWNER_UID}={self.uid}")]
        try:
            left = [
                n["metadata"]["name"] for n in k8s.call(self.api, "GET", "/api/v1/namespaces", owned)["items"]
            ]
        except k8s.ApiException as exc:
            if exc.status != 403:
                raise
            # A pipeline may not list namespaces (cluster scope). The operator removes the
            # environment's finalizer only once its namespaces are gone, so waiting for it is enough.
            left = []
        try:  # the operator must stay up until it has removed its finalizer too
            k8s.client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                GROUP, VERSION, self.options.namespace, PLURAL, self.name
            )
            left.append(f"TestEnvironment {self.name}")
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
        return left
