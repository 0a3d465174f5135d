"""Leader election on a coordination.k8s.io Lease: of several operator processes (replicas, or an
old and a new pod while an upgrade rolls out), only the one holding the Lease runs kopf.

The rules are client-go's: a holder renews every `retry` seconds; a candidate takes the Lease
only once `duration` seconds passed since the last renewal; every write carries the
resourceVersion it read, so of two candidates one gets a 409 and stays a candidate. A holder
that could not renew for `renew_deadline` seconds (< `duration`) stops itself: by the time anyone
else may take the Lease, it has stopped acting. A holder that stops cleanly gives the Lease up,
so a successor starts at once.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import socket
import uuid
from typing import Any

from kubernetes import client

from testenv_operator import kubeio

log = logging.getLogger(__name__)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _micro(when: datetime.datetime) -> str:
    """A MicroTime as the API server writes it."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def identity() -> str:
    """This process, as the Lease names its holder: the pod (host) name, the pid and a nonce."""
    return f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:6]}"


@dataclasses.dataclass
class Lease:
    api: client.ApiClient
    namespace: str
    name: str
    holder: str = dataclasses.field(default_factory=identity)
    duration: int = 15
    renew_deadline: float = 10.0
    retry: float = 2.0
    last_renewed: float | None = None  # monotonic time of this holder's last successful write

    def _read(self) -> dict[str, Any] | None:
        return kubeio.read_lease(self.api, self.namespace, self.name)

    def _body(self, current: dict[str, Any] | None, now: datetime.datetime) -> dict[str, Any]:
        spec = dict((current or {}).get("spec") or {})
        taking_over = spec.get("holderIdentity") != self.holder
        transitions = int(spec.get("leaseTransitions") or 0)
        if taking_over:
            spec["acquireTime"] = _micro(now)
            if spec.get("holderIdentity"):
                transitions += 1
        spec.update(
            holderIdentity=self.holder,
            leaseDurationSeconds=self.duration,
            renewTime=_micro(now),
            leaseTransitions=transitions,
        )
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if current:
            metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def held_by_another(self, current: dict[str, Any] | None, now: datetime.datetime) -> str | None:
        """The other holder whose Lease has not run out yet, if any."""
        spec = (current or {}).get("spec") or {}
        other = spec.get("holderIdentity")
        renewed = _parse(spec.get("renewTime"))
        if not other or other == self.holder or renewed is None:
            return None
        lasts = datetime.timedelta(seconds=int(spec.get("leaseDurationSeconds") or self.duration))
        return str(other) if renewed + lasts > now else None

    def try_hold(self, monotonic_now: float) -> bool:
        """Take or renew the Lease; False while someone else holds it or another write won."""
        current = self._read()
        now = _now()
        if self.held_by_another(current, now):
            return False
        try:
            kubeio.write_lease(self.api, self._body(current, now))
        except kubeio.ConflictError:  # another candidate wrote first
            return False
        self.last_renewed = monotonic_now
        return True

    def holder_now(self) -> str:
        spec = (self._read() or {}).get("spec") or {}
        return str(spec.get("holderIdentity") or "nobody")

    def lost(self, monotonic_now: float) -> bool:
        """True once this holder went `renew_deadline` seconds without a successful renewal."""
        return self.last_renewed is None or monotonic_now - self.last_renewed > self.renew_deadline

    def release(self) -> None:
        """Give the Lease up (a clean stop), so the next candidate need not wait it out."""
        current = self._read()
        spec = (current or {}).get("spec") or {}
        if current is None or spec.get("holderIdentity") != self.holder:
            return
        body = self._body(current, _now())
        body["spec"].update(holderIdentity=None, leaseDurationSeconds=1, renewTime=_micro(_now()))
        try:
            kubeio.write_lease(self.api, body)
        except kubeio.ApiError as exc:
            log.warning("could not give the Lease %s/%s up: %s", self.namespace, self.name, exc)
