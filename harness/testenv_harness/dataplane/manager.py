"""The `local` cluster's data plane: one real host process per simulated service pod.

kwok makes pods Running and Ready without running anything. For every pod of the environment
this manager starts the real service on a free host port (see runners.py) and, once it
accepts connections, creates a kwok PortForward rule so that the API server's port-forward to
that pod reaches the process. When a pod goes away (restart, scale-down, teardown) its process
is stopped. Children are tied to this process (PR_SET_PDEATHSIG), so a killed test run cannot
leave services running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from testenv_api import LABEL_OWNER_UID, LABEL_POOL_UID
from testenv_harness.dataplane.runners import Launch, PodSpec, RunnerError, launch_for, pod_spec
from testenv_harness.ground import k8s
from testenv_harness.ground.children import dies_with_parent
from testenv_harness.ground.localports import free_port
from testenv_harness.ground.waiting import WaitTimeoutError, wait_for

log = logging.getLogger(__name__)
KWOK_GROUP, KWOK_VERSION, PORT_FORWARDS = "kwok.x-k8s.io", "v1alpha1", "portforwards"


def _forwards(namespace: str) -> str:
    """The path of a namespace's kwok PortForwards."""
    return f"/apis/{KWOK_GROUP}/{KWOK_VERSION}/namespaces/{namespace}/{PORT_FORWARDS}"


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


#: How much lower the services' CPU priority is than the run's own processes' (nice).
SERVICE_NICENESS = 5


def _below_the_tests() -> Callable[[], None]:
    """A child's set-up: it dies with this thread, and yields the CPU to the run's processes.

    Each service is a session of its own (for `killpg`), and with the kernel's autogroups
    (sched_autogroup_enabled, on by default) a session weighs as much as the whole test run: at
    -n 4, eight starting services got eight shares of the 2 cores and the run's workers, probes
    and forwards together one, so a worker's Redis answered through its forward only once its
    Kafka had started. Both the session's and the process's niceness are raised.
    """
    die = dies_with_parent()

    def preexec() -> None:
        die()
        os.nice(SERVICE_NICENESS)
        with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as autogroup:
            autogroup.write(str(SERVICE_NICENESS))

    return preexec


class _Served:
    """One pod's process and where it listens."""

    def __init__(self, pod: PodSpec, workdir: Path) -> None:
        self.pod = pod
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.started = time.monotonic()
        self.ready_after: float | None = None
        self.error = ""

    def log_tail(self, lines: int = 15) -> str:
        texts = []
        for name in ("process.log", "kafka.log"):
            path = self.workdir / name
            if path.exists():
                texts += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(texts)


class DataPlane:
    """Serves the pods of one TestEnvironment (by owner UID) with host processes."""

    def __init__(
        self,
        api: k8s.client.ApiClient,
        owner_uid: str,
        workdir: Path,
        report: Callable[[str], None] = log.info,
    ) -> None:
        self.api = api
        self.owner_uid = owner_uid
        self.root = workdir
        self.report = report
        self.served: dict[str, _Served] = {}  # pod uid -> process
        self._spawn: queue.Queue[tuple[str, Launch]] = queue.Queue()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dataplane")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dataplane", daemon=True)

    def start(self) -> DataPlane:
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    # The loop thread is the only one that forks, so PR_SET_PDEATHSIG (which follows the
    # forking thread) holds for the whole run.
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as exc:  # a failed poll is retried; the run must not lose its data plane
                log.warning("data plane sync failed: %s", exc)
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:
                try:
                    uid, launch = self._spawn.get(timeout=0.05)
                except queue.Empty:
                    continue
                self._launch(uid, launch)
        self._stop_all()

    def _pods(self) -> list[dict[str, Any]]:
        """The environment's pods: those it made, and those in namespaces it claimed from a pool
        (they carry the pool's labels; nothing runs them before the claim on this cluster)."""
        owned = f"{LABEL_OWNER_UID}={self.owner_uid}"
        pods: list[dict[str, Any]] = k8s.call(self.api, "GET", "/api/v1/pods", [("labelSelector", owned)])[
            "items"
        ]
        claimed = k8s.call(
            self.api, "GET", "/api/v1/namespaces", [("labelSelector", f"{owned},{LABEL_POOL_UID}")]
        )
        for namespace in claimed["items"]:
            pods += k8s.call(self.api, "GET", f"/api/v1/namespaces/{namespace['metadata']['name']}/pods")[
                "items"
            ]
        return pods

    def _sync(self) -> None:
        live = {
            p["metadata"]["uid"]: p
            for p in self._pods()
            if not p["metadata"].get("deletionTimestamp") and p["spec"].get("nodeName")
        }
        for uid, pod in live.items():
            if uid not in self.served:
                spec = pod_spec(pod, lambda _port: free_port())
                served = _Served(spec, self.root / spec.namespace / spec.name)
                self.served[uid] = served
                self._pool.submit(self._prepare, uid, served)
        for uid in [u for u in self.served if u not in live]:
            self._stop_pod(uid)

    def _prepare(self, uid: str, served: _Served) -> None:
        try:
            shutil.rmtree(served.workdir, ignore_errors=True)
            served.workdir.mkdir(parents=True)
            launch = launch_for(served.pod, served.workdir)
            if launch.prepare:
                launch.prepare()
        except (RunnerError, OSError) as exc:
            self._fail(served, f"cannot serve {served.pod.namespace}/{served.pod.name}: {exc}")
            return
        self._spawn.put((uid, launch))

    def _launch(self, uid: str, launch: Launch) -> None:
        served = self.served.get(uid)
        if served is None:  # the pod went away while we prepared
            return
        handle = (served.workdir / "process.log").open("ab")
        served.process = subprocess.Popen(
            launch.argv,
            env=launch.env,
            cwd=served.workdir,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_below_the_tests(),
        )
        handle.close()
        self._pool.submit(self._await_ready, uid, served, launch.wait_ports)

    def _await_ready(self, uid: str, served: _Served, ports: tuple[int, ...]) -> None:
        def settled() -> str | None:
            """How the wait ends: "listening", "stopped" (on purpose: pod gone, run over), "exited"."""
            if all(_listening(p) for p in ports):
                return "listening"
            if uid not in self.served or self._stop.is_set():
                return "stopped"
            process = served.process
            return "exited" if process is None or process.poll() is not None else None

        try:
            outcome = wait_for(
                settled,
                timeout=180,
                what=f"ports {', '.join(map(str, ports))} to accept connections",
                interval=0.1,
                seen=lambda: "closed: " + ", ".join(str(p) for p in ports if not _listening(p)),
            )
        except WaitTimeoutError as exc:
            outcome = f"did not listen: {exc}"
        if outcome == "listening":
            self._forward(served)
            served.ready_after = time.monotonic() - served.started
        elif outcome != "stopped":
            self._fail(
                served,
                f"{served.pod.service_type} for {served.pod.namespace}/{served.pod.name} {outcome}; "
                f"last lines of its log:\n{served.log_tail()}",
            )

    def _fail(self, served: _Served, message: str) -> None:
        """Record why a pod is not served where the worker's error message will find it."""
        served.error = message
        self.report(message)
        with contextlib.suppress(OSError):
            (self.root / f"{served.pod.namespace}.problem").write_text(message)

    def _forward(self, served: _Served) -> None:
        pod = served.pod
        body = {
            "apiVersion": f"{KWOK_GROUP}/{KWOK_VERSION}",
            "kind": "PortForward",
            "metadata": {
                "name": pod.name,
                "namespace": pod.namespace,
                "labels": {LABEL_OWNER_UID: self.owner_uid},
            },
            "spec": {
                "forwards": [
                    {"ports": [container], "target": {"port": host, "address": "127.0.0.1"}}
                    for container, host in pod.ports.items()
                ]
            },
        }
        try:
            k8s.call(self.api, "POST", _forwards(pod.namespace), body=body)
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise

    def _stop_all(self) -> None:
        """The run is over: kill every service at once. A test service holds nothing worth a graceful
        stop, and a Kafka broker's takes seconds. Their pods go with the environment's namespaces."""
        ending = list(self.served.values())
        self.served.clear()
        running = [s.process for s in ending if s.process is not None and s.process.poll() is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for process in running:
            process.wait(10)
        for served in ending:
            shutil.rmtree(served.workdir, ignore_errors=True)

    def _stop_pod(self, uid: str) -> None:
        served = self.served.pop(uid, None)
        if served is None:
            return
        process = served.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        with contextlib.suppress(k8s.ApiException):
            k8s.call(self.api, "DELETE", f"{_forwards(served.pod.namespace)}/{served.pod.name}")
        shutil.rmtree(served.workdir, ignore_errors=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._pool.shutdown(wait=False, cancel_futures=True)
