"""A leader cut off from the API server by dropped (not refused) connections steps down before a
standby acts, and no environment ever has two writers.

Each operator reaches the API server through a relay of this test's own: the operator speaks
plain HTTP to it on a loopback port, and the relay carries the bytes over TLS (the cluster's
admin certificate) to the real API server. The relay reads the requests' first lines as they
pass, so the test knows when each process sent which write, and can blackhole: from then on it
carries nothing in either direction, and accepts new connections without ever answering, while
every connection stays open, as a dead NAT entry or a partition leaves them. Nothing is refused,
so only the operator's own timeouts and timers can get it out. Two cuts:

- everything: every connection of the leader, and every new one;
- the Lease only: each connection of the leader's Lease client, from its next Lease request on,
  while kopf and the passes reach the API server as before. The leader can no longer renew but
  could still write everything else: the case where a renewal that hangs must not keep it acting.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import re
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from testenv_api import Phase
from testenv_harness.ground.waiting import wait_for
from testenv_harness.provision.clusters import Cluster
from testenv_harness.provision.operator_process import OperatorProcess

from . import environments as te

pytestmark = [pytest.mark.usefixtures("crd"), pytest.mark.chaos]

#: TESTENV_LEASE_SECONDS of both operators: the renew deadline is 4 s, the exit deadline 5 s.
LEASE_SECONDS = 6
_REQUEST_LINE = re.compile(rb"(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) (/\S*) HTTP/1\.1\r\n")
_WRITES = ("POST", "PUT", "PATCH", "DELETE")


@dataclasses.dataclass(frozen=True)
class Request:
    at: float  # wall time the relay read its first line
    method: str
    path: str
    forwarded: bool

    @property
    def write(self) -> bool:
        """A write of any kind, kopf's own included (finalizers, its annotations, core Events):
        they pass the same mandate as ours (testenv_operator.kopf_writes)."""
        return self.method in _WRITES

    @property
    def lease(self) -> bool:
        return "/apis/coordination.k8s.io/" in self.path


@dataclasses.dataclass
class _Link:
    """One client connection through the relay: `held` once blackholed."""

    held: bool = False


class Relay:
    """Plain HTTP on 127.0.0.1 relayed over TLS to the API server; records requests; can blackhole.

    One asyncio loop in a thread of its own: TLS over memory buffers, so no SSL object is ever
    used by two threads at once."""

    def __init__(self, kubeconfig: Path) -> None:
        upstream = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=upstream)
        where = urllib.parse.urlsplit(upstream.host)
        self.host, self.upstream_port = where.hostname or "127.0.0.1", where.port or 443
        self.tls = ssl.create_default_context(cafile=upstream.ssl_ca_cert)
        self.tls.load_cert_chain(upstream.cert_file, upstream.key_file)
        self.requests: list[Request] = []
        #: None: carry everything; "everything" or "lease": what is blackholed (see the module).
        self.cut: str | None = None
        self.cut_at = 0.0
        self.loop = asyncio.new_event_loop()
        #: Every connection's task: held here, as a task whose client is gone and whose upstream
        #: is blackholed is referenced by nothing else, and would be collected while pending.
        self.serving: set[asyncio.Task[None]] = set()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig that reaches the API server through this relay (no credentials: the relay
        presents the cluster's)."""
        server = f"http://127.0.0.1:{self.port}"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "relay", "cluster": {"server": server}}],
                    "users": [{"name": "relay", "user": {}}],
                    "contexts": [{"name": "relay", "context": {"cluster": "relay", "user": "relay"}}],
                    "current-context": "relay",
                }
            )
        )
        return path

    def blackhole(self, what: str) -> float:
        self.cut_at = time.time()
        self.cut = what
        return self.cut_at

    def close(self) -> None:
        async def shut() -> None:
            self.server.close()
            serving = list(self.serving)
            for task in serving:
                task.cancel()  # each closes its connections on the way out
            await asyncio.gather(*serving, return_exceptions=True)

        with contextlib.suppress(RuntimeError, TimeoutError):
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.serving.add(task)
            task.add_done_callback(self.serving.discard)
        link = _Link(held=self.cut == "everything")
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            if not link.held:
                up = await asyncio.open_connection(
                    self.host, self.upstream_port, ssl=self.tls, server_hostname=self.host
                )
            await asyncio.gather(
                self._up(link, reader, up[1] if up else None), self._down(link, up[0] if up else None, writer)
            )
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for each in (writer, up[1] if up else None):
                if each is not None:
                    each.close()

    async def _up(
        self, link: _Link, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter | None
    ) -> None:
        """The client's bytes: their request lines noted, carried on unless blackholed."""
        pending, scanned = bytearray(), 0
        while data := await reader.read(65536):
            now = time.time()
            pending += data
            lines = list(_REQUEST_LINE.finditer(pending, scanned))
            if self.cut == "everything" or (
                self.cut == "lease" and any(b"/apis/coordination.k8s.io/" in m.group(2) for m in lines)
            ):
                link.held = True
            forward = upstream is not None and not link.held
            for found in lines:
                method, path = found.group(1).decode(), found.group(2).decode(errors="replace")
                self.requests.append(Request(now, method, path, forward))
                scanned = found.end()
            if len(pending) > 65536:  # keep a tail long enough for a request line cut in two
                cut = max(scanned, len(pending) - 8192)
                del pending[:cut]
                scanned = max(0, scanned - cut)
            if forward and upstream is not None:
                upstream.write(data)
                await upstream.drain()
        if upstream is not None and not link.held:
            upstream.close()

    async def _down(
        self, link: _Link, upstream: asyncio.StreamReader | None, writer: asyncio.StreamWriter
    ) -> None:
        """The API server's bytes, carried back unless blackholed."""
        if upstream is None:
            return
        while data := await upstream.read(65536):
            if not link.held and self.cut != "everything":
                writer.write(data)
                await writer.drain()
        if not link.held:
            writer.close()

    def writes(self, since: float = 0.0, lease: bool = False) -> list[Request]:
        """Write requests read from the client since `since`: the Lease's, or (default) the others."""
        return [r for r in list(self.requests) if r.write and r.at >= since and r.lease == lease]


@pytest.fixture
def relays() -> Iterator[list[Relay]]:
    made: list[Relay] = []
    yield made
    for relay in made:
        relay.close()


@pytest.fixture
def operators() -> Iterator[list[OperatorProcess]]:
    started: list[OperatorProcess] = []
    yield started
    for process in started:
        process.stop()


def _say(line: str) -> None:
    print(f"[partition] {line}", flush=True)


def _logged_at(log: Path, text: str) -> float | None:
    """The wall time of the first JSON log line whose message starts with `text`."""
    if not log.exists():
        return None
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError, AttributeError):
            record = json.loads(line)
            if str(record.get("message", "")).startswith(text):
                return datetime.datetime.fromisoformat(record["timestamp"]).timestamp()
    return None


def _holder_pid(api: client.ApiClient, lease: str) -> int:
    """The pid in the Lease's holder identity (host_pid_nonce); 0 for none."""
    try:
        found = client.CoordinationV1Api(api).read_namespaced_lease(lease, "default")
    except ApiException as exc:
        if exc.status == 404:
            return 0
        raise
    return int((found.spec.holder_identity or "_0_").split("_")[-2])


class Churn:
    """Creates a one-worker environment every `every` seconds until stopped: work for whoever leads."""

    def __init__(self, api: client.ApiClient, tenant: str, every: float = 0.6) -> None:
        self.api, self.tenant, self.every = api, tenant, every
        self.names: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.wait(self.every):
            name = f"churn-{len(self.names)}"
            te.create(self.api, self.tenant, te.manifest(name, workers=1))
            self.names.append(name)

    def __enter__(self) -> Churn:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join(10)


class ExitWatch:
    """When a process ended, to 20 ms."""

    def __init__(self, process: OperatorProcess) -> None:
        self.at: float | None = None
        self.thread = threading.Thread(target=self._run, args=(process,), daemon=True)
        self.thread.start()

    def _run(self, process: OperatorProcess) -> None:
        while process.alive():
            time.sleep(0.02)
        self.at = time.time()


@pytest.mark.parametrize("cut_off", ["everything", "lease"])
def test_a_leader_cut_off_steps_down_before_the_standby_acts_and_nothing_has_two_writers(
    api: client.ApiClient,
    tenant: str,
    local_cluster: Cluster,
    tmp_path: Path,
    relays: list[Relay],
    operators: list[OperatorProcess],
    cut_off: str,
) -> None:
    lease = f"operator-{uuid.uuid4().hex[:6]}"
    settings = {
        **te.OPERATOR_SETTINGS,
        "TESTENV_LEADER_ELECTION": f"default/{lease}",
        "TESTENV_LEASE_SECONDS": str(LEASE_SECONDS),
    }
    for index in range(2):
        relay = Relay(local_cluster.kubeconfig)
        relays.append(relay)
        kubeconfig = relay.kubeconfig(tmp_path / f"relay-{index}.kubeconfig")
        process = OperatorProcess(kubeconfig, tmp_path / f"operator-{index}.log", **settings)
        operators.append(process.start())
    pids = [p.proc.pid for p in operators if p.proc]
    holder = wait_for(lambda: _holder_pid(api, lease) or None, timeout=30, what="a leader")
    assert holder in pids
    ours = pids.index(holder)
    leader, standby = operators[ours], operators[1 - ours]
    cut, through = relays[ours], relays[1 - ours]
    assert standby.proc is not None

    churn: Churn | None = None
    checked = False
    try:
        te.create(api, tenant, te.manifest("warm", workers=1))
        te.wait_phase(api, tenant, "warm", Phase.READY, readyWorkers=1)
        # Cut the leader off while it is busy: right after it made the first of three namespaces, and
        # with a new environment to serve every 0.6 s until after the standby took over.
        uid = te.create(api, tenant, te.manifest("busy", workers=3))["metadata"]["uid"]
        wait_for(lambda: te.owned_namespaces(api, uid), timeout=30, interval=0.05, what="provisioning")
        churn = Churn(api, tenant)
        with churn:
            cut_at = cut.blackhole(cut_off)
            exit_watch = ExitWatch(leader)
            wait_for(
                lambda: _holder_pid(api, lease) == (standby.proc.pid if standby.proc else -1),
                timeout=30,
                interval=0.05,
                what="the standby to take the Lease",
            )
            time.sleep(2)  # the old leader, were it still acting, would write next to the new one now
        names = ["warm", "busy", *churn.names]
        te.wait_phase(api, tenant, "busy", Phase.READY, timeout=120, readyWorkers=3)
        for name in churn.names:
            te.wait_phase(api, tenant, name, Phase.READY, timeout=120, readyWorkers=1)
        ready = time.time()

        stepped_down = _logged_at(leader.log, "stepping down: lost the Lease")
        running = _logged_at(standby.log, "holding the Lease")
        took_over = through.writes(since=cut_at, lease=True)[0].at  # its first try to write the Lease
        standby_writes = through.writes()
        first = standby_writes[0].at
        tried = cut.writes(since=cut_at)
        delivered = [r for r in tried if r.forwarded]
        late = [r for r in tried if stepped_down is None or r.at >= stepped_down]
        overlap = [r for r in delivered if r.at >= first]

        def since(moment: float | None) -> str:
            return "never" if moment is None else f"{moment - cut_at:.2f}s"

        _say(
            f"cut off: {cut_off}; Lease {LEASE_SECONDS}s; after the cut the leader stepped down at "
            f"{since(stepped_down)} and exited at {since(exit_watch.at)}; the standby wrote the Lease at "
            f"{since(took_over)}, ran kopf at {since(running)} and made its first other write at "
            f"{since(first)}; {len(names)} environments Ready at {since(ready)}"
        )
        _say(
            f"the leader's writes after the cut: {len(tried)} sent ({len(delivered)} delivered), "
            f"{len(late)} of them after it stepped down, {len(overlap)} delivered after the standby's first; "
            f"the standby's: {len(standby_writes)}"
        )
        # The order that keeps one writer: step down, exit, then the standby takes over and writes.
        assert overlap == [], f"two writers: the old leader wrote after the new one began: {overlap[:5]}"
        assert late == [], f"a leader that stepped down sends no write: {late[:5]}"
        assert stepped_down is not None, leader.tail()
        assert exit_watch.at is not None, "the leader still runs"
        assert leader.proc is not None
        assert leader.proc.returncode == 1, leader.tail()
        assert running is not None, standby.tail()
        assert stepped_down < exit_watch.at < took_over < running < first
        assert stepped_down - cut_at < LEASE_SECONDS * 2 / 3 + 0.5, "within the renew deadline"
        assert all(r.at >= took_over for r in standby_writes), "the standby wrote nothing while it waited"
        assert "standby: the Lease" in standby.log.read_text()

        checked = True
    finally:
        # The environments go while the new leader runs (the old one, were it still there, first).
        leader.kill()
        names = ["warm", "busy", *(churn.names if churn else [])]
        with contextlib.suppress(Exception) if not checked else contextlib.nullcontext():
            te.delete_many(api, tenant, names)
            client.CoordinationV1Api(api).delete_namespaced_lease(lease, "default")
