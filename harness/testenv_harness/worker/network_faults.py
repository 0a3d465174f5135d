"""Network faults on one worker's forwards: Toxiproxy's toxics, and `down`.

They act in this process's forwarder, on the listeners of one service (every port of it), so
no other worker, and no other service of this worker, sees them. A fault is checked whole
before anything changes; `fault()` removes it again when its block ends, however it ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from testenv_harness.ground.errors import TestEnvError
from testenv_harness.ground.localports import free_port
from testenv_harness.services.toxiproxy import Toxiproxy, ToxiproxyError
from testenv_harness.tunnel.toxics import Toxic, ToxicError, parse_toxic
from testenv_harness.worker.connection import WorkerConnection
from testenv_harness.worker.fault_wire import ControlClient, send

if TYPE_CHECKING:
    from testenv_harness.tunnel.portforward import ServiceForward

DOWN = "down"
_lock = threading.Lock()  # one change to a worker's faults at a time (the control server's threads)
_names = itertools.count(1)


@dataclasses.dataclass(eq=False)
class Fault:
    """A fault in force on one service: a toxic, or `down` (toxic None)."""

    service: str
    toxic: Toxic | None
    listeners: list[ServiceForward]
    #: The service's fault proxy in its pod (`faultProxy: true`) and the name the toxic has there.
    proxy: Toxiproxy | None = None
    proxy_toxic: str = ""

    @property
    def kind(self) -> str:
        return self.toxic.kind if self.toxic is not None else DOWN

    def describe(self) -> dict[str, object]:
        return {"service": self.service, **(self.toxic.describe() if self.toxic else {"toxic": DOWN})}


class NetworkFaults(WorkerConnection):
    @contextlib.contextmanager
    def fault(self, service: str, toxic: str, **settings: object) -> Iterator[Fault]:
        """Apply a toxic (or `down`) to this worker's forward of `service` while the block runs.

        `toxic` and its attributes are Toxiproxy's (latency=300, jitter=50; rate; delay;
        timeout; average_size, size_variation, delay; bytes), with `stream` ("downstream", the
        default: service to client; "upstream") and `toxicity` (0..1: the share of connections
        that get it). `down` refuses new connections and cuts the open ones.
        """
        if (path := self._keeper_socket()) is not None:
            with self._kept_fault(path, service, toxic, settings) as applied:
                yield applied
            return
        applied = self.start_fault(service, toxic, **settings)
        try:
            yield applied
        finally:
            self.stop_fault(applied)

    def _keeper_socket(self) -> Path | None:
        """A kept environment's worker (`--testenv-reuse`) is forwarded by the keeper: its socket."""
        if self.forwarder is None and self.handoff.forwarded and self.handoff.fault_sockets:
            return Path(self.handoff.fault_sockets) / f"{self.worker}.sock"
        return None

    @contextlib.contextmanager
    def _kept_fault(
        self, path: Path, service: str, toxic: str, settings: dict[str, object]
    ) -> Iterator[Fault]:
        """A fault the keeper applies to its forward, held while the block runs (and ended when
        this process goes, however it goes, since it lasts as long as the connection)."""
        parsed = self._checked(service, toxic, settings)
        try:
            client = ControlClient(path)
        except OSError as exc:
            raise TestEnvError(f"the reuse keeper's fault socket {path} does not answer: {exc}") from exc
        try:
            client.ask({"op": "add", "service": service, "toxic": toxic, "settings": settings, "hold": True})
            yield Fault(service, parsed, [])
        finally:
            with contextlib.suppress(OSError, TestEnvError):
                send(client.stream, {"op": "release"})
                client.answer()  # ended: the next line of the test sees the service as before
            client.close()

    def _checked(self, service: str, toxic: str, settings: dict[str, object]) -> Toxic | None:
        """The toxic (None for down), checked before anything changes."""
        try:
            self.service(service)
        except KeyError as exc:
            raise ToxicError(str(exc.args[0])) from exc
        if toxic == DOWN:
            if settings:
                raise ToxicError(f"down takes no attributes (given: {', '.join(settings)})")
            return None
        return parse_toxic(toxic, settings)

    def start_fault(self, service: str, toxic: str, **settings: object) -> Fault:
        """Apply a fault until `stop_fault` (what `fault` does around its block)."""
        listeners = self._listeners_of(service)
        parsed = self._checked(service, toxic, settings)
        with _lock:
            if parsed is None and any(listener.down for listener in listeners):
                raise TestEnvError(f"{service} of worker {self.worker} is down already: end that fault first")
            applied = Fault(service, parsed, listeners)
            self._in_pod(applied, start=True)  # first: a refusal there leaves nothing half applied
            for listener in listeners:
                if parsed is None:
                    listener.take_down()
                else:
                    listener.toxics.add(parsed)
        return applied

    def _in_pod(self, fault: Fault, start: bool) -> None:
        """The same fault on the service's fault proxy in its pod (`faultProxy: true`), for clients
        inside the worker's namespace: the toxic on each of its proxies, or each one disabled."""
        if start:
            port = self.service(fault.service).fault_proxy_port
            if not port:
                return
            fault.proxy = self._fault_proxy(fault.service, port)
        proxy = fault.proxy
        if proxy is None:
            return
        names = sorted(proxy.proxies())
        if fault.toxic is None:
            for name in names:
                proxy.set_enabled(name, not start)
            return
        if start:
            fault.proxy_toxic = f"testenv-{next(_names)}"
            toxic, added = fault.toxic, []
            try:
                for name in names:
                    proxy.add_toxic(
                        name,
                        toxic.kind,
                        name=fault.proxy_toxic,
                        stream=toxic.stream,
                        toxicity=toxic.toxicity,
                        attributes=toxic.attributes,
                    )
                    added.append(name)
            except ToxiproxyError:
                for name in added:  # all of its proxies or none
                    with contextlib.suppress(ToxiproxyError):
                        proxy.remove_toxic(name, fault.proxy_toxic)
                raise
            return
        for name in names:
            with contextlib.suppress(ToxiproxyError):  # gone with a restarted pod: nothing to remove
                proxy.remove_toxic(name, fault.proxy_toxic)

    def _fault_proxy(self, service: str, port: int) -> Toxiproxy:
        """The API of `service`'s fault proxy, through a forward of this process (made once)."""
        found = self._fault_proxies.get(service)
        if found is None:
            assert self.forwarder is not None
            local = free_port()
            self.forwarder.listen(service, port, local)
            found = self._fault_proxies[service] = Toxiproxy(f"http://127.0.0.1:{local}", timeout=30)
        return found

    @functools.cached_property
    def _fault_proxies(self) -> dict[str, Toxiproxy]:
        """Per service, its fault proxy's API through the forward made for it."""
        return {}

    def stop_fault(self, fault: Fault) -> None:
        """End a fault: the toxic is removed from every connection, or the service listens again."""
        with _lock:
            for listener in fault.listeners:
                if fault.toxic is None:
                    listener.bring_up()
                else:
                    listener.toxics.remove(fault.toxic)
            self._in_pod(fault, start=False)

    def faults(self) -> list[Fault]:
        """The faults in force on this worker's forwards, per service in the order applied."""
        if self.forwarder is None:
            return []
        found = []
        for service in self.services():
            listeners = self.forwarder.listeners(service.name)
            if not listeners:
                continue
            if listeners[0].down:
                found.append(Fault(service.name, None, listeners))
            found += [Fault(service.name, toxic, listeners) for toxic in listeners[0].toxics.active]
        return found

    def clear_faults(self, service: str | None = None) -> int:
        """End every fault (of `service` only, if given); how many ended."""
        if service is not None:
            self._listeners_of(service)  # an unknown service is an error, not nothing to clear
        ending = [f for f in self.faults() if service in (None, f.service)]
        for fault in ending:
            self.stop_fault(fault)
        return len(ending)

    def _listeners_of(self, service: str) -> list[ServiceForward]:
        if self.direct:
            raise TestEnvError(
                f"faults act on a worker's forwards, and worker {self.worker} connects directly to its "
                "Services (connect=direct): run with --testenv-connect=forward (`testenv run --connect "
                "forward`) to inject faults"
            )
        try:
            self.service(service)
        except KeyError as exc:
            raise ToxicError(str(exc.args[0])) from exc
        listeners = self.forwarder.listeners(service) if self.forwarder is not None else []
        if not listeners and self._keeper_socket() is not None:
            raise TestEnvError(
                f"worker {self.worker}'s forwards are the reuse keeper's: use `with testenv.fault(...)`, "
                "which asks the keeper to apply the fault for the block's length"
            )
        if not listeners:
            raise TestEnvError(
                f"this process does not forward worker {self.worker}'s {service}: a fault applies where "
                "the worker is forwarded (the test's own process, or `testenv fault` for `testenv run`, "
                "`testenv up --forward` and `testenv forward`)"
            )
        return listeners
