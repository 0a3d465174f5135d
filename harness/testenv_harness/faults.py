"""Per-worker faults: restart or wipe one of this worker's services; no other worker notices."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
import urllib.request
from collections.abc import Iterator

from kubernetes.client.exceptions import ApiException

from testenv_harness import kafka_wire, kube, probes
from testenv_harness.clusters import provider_class
from testenv_harness.connection import RESTART_RIGHTS, WorkerConnection
from testenv_harness.errors import TestEnvError
from testenv_harness.podwatch import PodWatch


class Faults(WorkerConnection):
    @contextlib.contextmanager
    def _pods(self) -> Iterator[PodWatch]:
        """The forwarder's pod watch, or (in a process that forwards nothing) one of its own."""
        if self.forwarder is not None:
            yield self.forwarder.pods
            return
        pods = PodWatch(self.api, self.namespace)
        try:
            yield pods
        finally:
            pods.close()

    def restart(self, name: str, timeout: float = 120, probe: bool = True) -> None:
        """Take this worker's `name` down and bring it back; other workers never notice.

        `probe=False` skips the check that the service answers on its local port again: for a
        process (`testenv restart`) whose worker nobody forwards.
        """
        service = self.service(name)
        deadline = time.monotonic() + timeout
        self.require_rights(RESTART_RIGHTS)
        with self._pods() as pods:
            old = set(pods.ready(name))
            for pod in old:
                try:
                    self.core.delete_namespaced_pod(pod, self.namespace)
                except ApiException as exc:
                    if exc.status == 403:
                        raise kube.refusal(
                            exc, "delete", "pods", self.namespace, kube.worker_grant(self.handoff.name)
                        ) from exc
                    # Anything else (already gone, a conflict): the wait below tells.
            if self.forwarder is not None:
                # Clients see the server go away now, not when the watch reports the deletion.
                self.forwarder.drop_pods(lambda pod: pod in old)
            if not pods.wait(lambda: bool(set(pods.ready(name, timeout=0)) - old), timeout):
                raise self._not_ready(f"{name} did not come back within {timeout:.0f}s of a restart")
        if not probe:
            return
        host, port = self.endpoint(name)
        try:
            probes.wait_answering(service.type, port, max(1.0, deadline - time.monotonic()), host=host)
        except TimeoutError as exc:
            raise self._not_ready(f"{name} came back but does not answer: {exc}") from exc

    def reset_all(self) -> None:
        """Wipe every service of this worker (what a crashed worker's replacement does first)."""
        for service in self._status().services:
            self.reset(service.name)

    def reset(self, name: str) -> None:
        """Wipe `name`'s state: FLUSHALL for Redis, every topic and consumer group deleted for Kafka,
        the reset API this cluster's service has (moto's), a restart for the rest (and for a
        broker that refuses)."""
        service = self.service(name)
        host, port = self.endpoint(name)
        endpoint = provider_class(self.handoff.provider).reset_endpoint(service.type)
        if service.type == "redis":
            with socket.create_connection((host, port), timeout=5) as sock:
                sock.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
                if not sock.recv(16).startswith(b"+OK"):
                    raise TestEnvError(f"FLUSHALL on {name} did not answer +OK")
        elif service.type == "kafka":
            try:
                kafka_wire.reset(port, host=host)
            except (kafka_wire.ResetError, OSError, ValueError, struct.error):
                self.restart(name)  # e.g. a consumer group a crashed test left members in: start empty
        elif endpoint is not None:
            request = urllib.request.Request(f"http://{host}:{port}{endpoint}", method="POST")
            with urllib.request.urlopen(request, timeout=10):
                pass
        else:
            self.restart(name)
