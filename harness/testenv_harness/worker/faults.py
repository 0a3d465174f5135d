"""Per-worker faults: restart or wipe one of this worker's services; no other worker notices."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from testenv_harness.ground import k8s, kube
from testenv_harness.services import catalog
from testenv_harness.services.base import ResetRefusedError
from testenv_harness.worker.connection import RESTART_RIGHTS, WorkerConnection

if TYPE_CHECKING:
    from testenv_harness.tunnel.podwatch import PodWatch


class Faults(WorkerConnection):
    @contextlib.contextmanager
    def _pods(self) -> Iterator[PodWatch]:
        """The forwarder's pod watch, or (in a process that forwards nothing) one of its own."""
        if self.forwarder is not None:
            yield self.forwarder.pods
            return
        from testenv_harness.tunnel.podwatch import PodWatch  # loaded where a worker restarts

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
                except k8s.ApiException as exc:
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
            catalog.wait_answering(service.type, port, max(1.0, deadline - time.monotonic()), host=host)
        except TimeoutError as exc:
            raise self._not_ready(f"{name} came back but does not answer: {exc}") from exc

    def reset_all(self) -> None:
        """Wipe every service of this worker (what a crashed worker's replacement does first)."""
        for service in self._status().services:
            self.reset(service.name)

    def reset(self, name: str) -> None:
        """Wipe `name`'s state through its own protocol where its type has a way (FLUSHALL for
        Redis, every topic and consumer group deleted for Kafka, moto's reset API), and by a
        restart otherwise (a custom service, PostgreSQL, or a server that refuses)."""
        service = self.service(name)
        kind = catalog.of(service.type)
        if kind is None or kind.reset is None:
            self.restart(name)
            return
        host, port = self.endpoint(name)
        try:
            kind.reset(host, port)
        except ResetRefusedError:
            self.restart(name)
