"""Per-worker faults: restart or wipe one of this worker's services; no other worker notices."""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.request

from kubernetes.client.exceptions import ApiException

from testenv_harness import probes
from testenv_harness.connection import WorkerConnection
from testenv_harness.errors import TestEnvError
from testenv_harness.portforward import ready_pods


class Faults(WorkerConnection):
    def restart(self, name: str, timeout: float = 120) -> None:
        """Take this worker's `name` down and bring it back; other workers never notice."""
        service = self.service(name)
        old = set(ready_pods(self.core, self.namespace, name))
        for pod in old:
            with contextlib.suppress(ApiException):
                self.core.delete_namespaced_pod(pod, self.namespace)
        for key, forward in self.forwards.items():
            if key.startswith(f"{name}/"):
                forward.drop()  # clients see the server go away now, not at their next request
        deadline = time.monotonic() + timeout
        while not (set(ready_pods(self.core, self.namespace, name)) - old):
            if time.monotonic() > deadline:
                raise self._not_ready(f"{name} did not come back within {timeout:.0f}s of a restart")
            time.sleep(0.2)
        try:
            probes.wait_answering(
                service.type, service.primary.local_port, max(1.0, deadline - time.monotonic())
            )
        except TimeoutError as exc:
            raise self._not_ready(f"{name} came back but does not answer: {exc}") from exc

    def reset_all(self) -> None:
        """Wipe every service of this worker (what a crashed worker's replacement does first)."""
        for service in self._status().services:
            self.reset(service.name)

    def reset(self, name: str) -> None:
        """Wipe `name`'s state: FLUSHALL for Redis, moto's reset API, a restart for the rest."""
        service = self.service(name)
        port = service.primary.local_port
        if service.type == "redis":
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
                if not sock.recv(16).startswith(b"+OK"):
                    raise TestEnvError(f"FLUSHALL on {name} did not answer +OK")
        elif service.type == "moto" or (service.type == "localstack" and self.handoff.provider == "local"):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST")
            with urllib.request.urlopen(request, timeout=10):
                pass
        else:
            self.restart(name)
