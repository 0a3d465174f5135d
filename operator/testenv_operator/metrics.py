"""The operator's Prometheus metrics (`prometheus_client`), served at TESTENV_METRICS.

Every metric lives in a registry of its `Metrics` object's own, never the library's global one:
a test makes as many as it likes, and nothing else imported into the process adds to the page.
`METRICS` describes each metric (name, type, labels, meaning); the objects are made from it,
and docs/operator.md shows its `table()` (a unit test keeps the two equal).

Where the numbers come from:

- environments and pools by phase, and each pool's free, ready and claimed workers: what the
  watch events last showed of each object (`saw_environment`, `saw_pool`, called by the event
  handlers, which see every change of every object served and its deletion), counted when
  scraped; so they are the API server's view, whoever wrote the status;
- create-to-Ready: the first Ready of an environment whose spec never changed, as its converger
  writes it (`handlers`): seconds since its creationTimestamp;
- passes and their durations: `Runtime.run_pass`, around the work alone (not the wait for the
  object's lock or a place among the passes);
- API errors: every call of the operator's own client (`kubeio`) that the API server refused or
  that failed on the way, by reason, the expected ones included (404 on deleting what is gone,
  409 on a claim another claimer won): a rise in one reason is what to look at;
- folded events: wake-ups of an object whose waker was already set (`Runtime.wake`): the pass
  already due serves them too. (kopf's own batch window folds an object's events earlier,
  unseen here.)

The endpoint is a small WSGI server on a thread of its own (prometheus_client's application,
answering at the URL's path only). `__main__` starts it before the Lease is awaited, so a
standby answers too (testenv_leader 0, nothing else of its own); a scrape neither waits for the
event loop nor holds it up.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import socket
import socketserver
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from testenv_api import Phase


@dataclasses.dataclass(frozen=True)
class Described:
    """One metric as the docs show it."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str

    @property
    def text(self) -> str:
        """The meaning as the page's HELP line says it: without the docs' code marks."""
        return self.help.replace("`", "")

    def row(self) -> str:
        labels = ", ".join(f"`{label}`" for label in self.labels)
        return f"| `{self.name}` | {self.type} | {labels} | {self.help} |"


ENVIRONMENTS = Described(
    "testenv_environments",
    "gauge",
    ("phase",),
    "TestEnvironments served, by `status.phase` (every phase, 0 included); one being deleted "
    "counts as Terminating, one without a status yet as Pending",
)
POOLS = Described(
    "testenv_pools",
    "gauge",
    ("phase",),
    "TestEnvironmentPools served, by `status.phase` (Filling, Ready, Failed); one without a "
    "status yet counts as Filling",
)
POOL_FREE = Described(
    "testenv_pool_workers_free",
    "gauge",
    ("namespace", "pool"),
    "a pool's unclaimed workers, starting or ready (`status.free`)",
)
POOL_READY = Described(
    "testenv_pool_workers_ready",
    "gauge",
    ("namespace", "pool"),
    "a pool's unclaimed workers that are ready to claim (`status.ready`)",
)
POOL_CLAIMED = Described(
    "testenv_pool_workers_claimed",
    "gauge",
    ("namespace", "pool"),
    "workers claimed from a pool that still exist (`status.claimed`)",
)
READY_SECONDS = Described(
    "testenv_environment_ready_seconds",
    "histogram",
    ("pooled",),
    "from an environment's creationTimestamp to its first Ready, once per environment whose spec "
    "never changed; `pooled`: `true` when its workers were claimed from a pool",
)
PASS_SECONDS = Described(
    "testenv_pass_duration_seconds",
    "histogram",
    ("kind", "depth"),
    "one pass of a converger (`kind` `environment`: `depth` `apply`, `resync`, `repair` or `report`; "
    "`kind` `pool`: `resync` or `fill`), its work alone",
)
PASSES = Described(
    "testenv_passes_total",
    "counter",
    ("kind", "result"),
    "passes by `kind` and `result`: `ok`, or `failed` (it raised; retried after a backoff)",
)
API_ERRORS = Described(
    "testenv_api_errors_total",
    "counter",
    ("reason",),
    "calls of the operator's own client (passes, tear-downs, sweeps, the Lease; not kopf's) that "
    "failed, by `reason`: the API server's (`NotFound`, `AlreadyExists`, `Conflict`, `Forbidden`, "
    "`Invalid`, `TooManyRequests`, ...; expected ones included), or `ClientTimeout` or "
    "`ConnectionFailed` when no answer came",
)
EVENTS_FOLDED = Described(
    "testenv_events_folded_total",
    "counter",
    (),
    "watch events (and claims, room made) that woke an object whose waker was already set: "
    "folded into the pass already due",
)
LEADER = Described(
    "testenv_leader",
    "gauge",
    (),
    "1 while this process acts (it holds the Lease, or runs without leader election); 0 while it stands by",
)
#: Every metric of ours, in the order the docs list them. prometheus_client's `process_*`,
#: `python_gc_*` and `python_info` come along.
METRICS = (
    ENVIRONMENTS,
    POOLS,
    POOL_FREE,
    POOL_READY,
    POOL_CLAIMED,
    READY_SECONDS,
    PASS_SECONDS,
    PASSES,
    API_ERRORS,
    EVENTS_FOLDED,
    LEADER,
)

#: A pool's phases, as `pooling` writes them (and the pool CRD's enum has them).
POOL_PHASES = ("Filling", "Ready", "Failed")
#: Each kind of pass, and how deep it goes (for environments, `reconciler.Depth`'s values).
PASS_DEPTHS = {"environment": ("apply", "resync", "repair", "report"), "pool": ("resync", "fill")}
#: From a pool claim (about a second) to a cold start pulling a Kafka image (minutes).
READY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)
#: From a report pass woken by a Deployment (milliseconds) to a first apply of many workers.
PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def table() -> str:
    """The metrics as docs/operator.md lists them."""
    head = "| metric | type | labels | meaning |\n|---|---|---|---|\n"
    return head + "\n".join(m.row() for m in METRICS) + "\n"


@dataclasses.dataclass(frozen=True)
class _PoolSeen:
    namespace: str
    name: str
    phase: str
    free: int
    ready: int
    claimed: int


class _Seen:
    """What the watch events last showed of each environment and pool, read when scraped.

    Written on the event loop, read on the endpoint's threads: under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.environments: dict[str, str] = {}
        self.pools: dict[str, _PoolSeen] = {}

    def environment(self, uid: str, phase: str | None) -> None:
        """An environment's phase now; None: it is gone."""
        with self._lock:
            if phase is None:
                self.environments.pop(uid, None)
            else:
                self.environments[uid] = phase

    def pool(self, uid: str, seen: _PoolSeen | None) -> None:
        """A pool as it is now; None: it is gone."""
        with self._lock:
            if seen is None:
                self.pools.pop(uid, None)
            else:
                self.pools[uid] = seen

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            environments = list(self.environments.values())
            pools = list(self.pools.values())
        return list(self._families(environments, pools))

    def _families(
        self, environments: Iterable[str] = (), pools: Iterable[_PoolSeen] = ()
    ) -> Iterator[Metric]:
        pools = sorted(pools, key=lambda p: (p.namespace, p.name))
        yield _by_phase(ENVIRONMENTS, [p.value for p in Phase], environments)
        yield _by_phase(POOLS, POOL_PHASES, [p.phase for p in pools])
        for described, field in ((POOL_FREE, "free"), (POOL_READY, "ready"), (POOL_CLAIMED, "claimed")):
            family = GaugeMetricFamily(described.name, described.text, labels=described.labels)
            for pool in pools:
                family.add_metric([pool.namespace, pool.name], getattr(pool, field))
            yield family


def _by_phase(described: Described, known: Iterable[str], phases: Iterable[str]) -> Metric:
    """A gauge family with one sample per phase: every known one (0 included, so that a graph
    shows 0 rather than nothing) and any other a status names."""
    counts = collections.Counter(phases)
    family = GaugeMetricFamily(described.name, described.text, labels=described.labels)
    for phase in dict.fromkeys([*known, *sorted(counts)]):
        family.add_metric([phase], counts[phase])
    return family


class Metrics:
    """The process's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._seen = _Seen()
        self.registry.register(self._seen)
        self.leader = Gauge(LEADER.name, LEADER.text, registry=self.registry)
        self.ready_seconds = Histogram(
            READY_SECONDS.name,
            READY_SECONDS.text,
            READY_SECONDS.labels,
            buckets=READY_BUCKETS,
            registry=self.registry,
        )
        self.pass_seconds = Histogram(
            PASS_SECONDS.name,
            PASS_SECONDS.text,
            PASS_SECONDS.labels,
            buckets=PASS_BUCKETS,
            registry=self.registry,
        )
        self.passes = Counter(PASSES.name, PASSES.text, PASSES.labels, registry=self.registry)
        self.api_errors = Counter(API_ERRORS.name, API_ERRORS.text, API_ERRORS.labels, registry=self.registry)
        self.events_folded = Counter(EVENTS_FOLDED.name, EVENTS_FOLDED.text, registry=self.registry)
        # Every series whose labels are known ahead, at 0 from the start: a rate over a series
        # that appears only with its first sample misses that sample.
        for pooled in ("false", "true"):
            self.ready_seconds.labels(pooled=pooled)
        for kind, depths in PASS_DEPTHS.items():
            for depth in depths:
                self.pass_seconds.labels(kind=kind, depth=depth)
            for result in ("ok", "failed"):
                self.passes.labels(kind=kind, result=result)

    # -- what the watches show ------------------------------------------------------------------

    def saw_environment(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        """A watch event of a TestEnvironment (`deleted`: it is gone)."""
        meta = body["metadata"]
        phase = str((body.get("status") or {}).get("phase") or Phase.PENDING.value)
        if meta.get("deletionTimestamp"):
            phase = Phase.TERMINATING.value  # before the tear-down says so itself
        self._seen.environment(meta["uid"], None if deleted else phase)

    def saw_pool(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        """A watch event of a TestEnvironmentPool (`deleted`: it is gone)."""
        meta, status = body["metadata"], body.get("status") or {}
        seen = _PoolSeen(
            meta.get("namespace") or "",
            meta["name"],
            str(status.get("phase") or POOL_PHASES[0]),
            int(status.get("free") or 0),
            int(status.get("ready") or 0),
            int(status.get("claimed") or 0),
        )
        self._seen.pool(meta["uid"], None if deleted else seen)

    # -- what happens ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def timing_pass(self, kind: str, depth: str) -> Iterator[None]:
        """Count and time one pass of `kind` (environment, pool) and `depth`; one that raises is `failed`."""
        start = time.monotonic()
        result = "failed"
        try:
            yield
            result = "ok"
        finally:
            self.pass_seconds.labels(kind=kind, depth=depth).observe(time.monotonic() - start)
            self.passes.labels(kind=kind, result=result).inc()

    def api_error(self, reason: str) -> None:
        self.api_errors.labels(reason=reason).inc()

    # -- serving --------------------------------------------------------------------------------

    def serve(self, url: str) -> Endpoint | None:
        """Serve the registry at `url` (http://HOST:PORT/PATH; port 0: any free one); None when
        `url` is empty. OSError when the address cannot be bound."""
        return Endpoint(url, self.registry) if url else None

    def scrape(self) -> str:
        """The page a scrape gets, in Prometheus's text format."""
        return generate_latest(self.registry).decode()


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    # A scrape that hangs must not hold the process's exit.
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    """No access log: a scrape every few seconds would fill the operator's."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Endpoint:
    """A registry served over HTTP at one URL, on a daemon thread, until `close`."""

    def __init__(self, url: str, registry: CollectorRegistry) -> None:
        where = urllib.parse.urlsplit(url)
        host, port = where.hostname or "0.0.0.0", where.port or 0
        self.path = where.path or "/"
        metrics_app = make_wsgi_app(registry)

        def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            if environ.get("PATH_INFO") != self.path:
                start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
                return [f"the metrics are at {self.path}\n".encode()]
            page: Iterable[bytes] = metrics_app(environ, start_response)
            return page

        # An IPv6 host (http://[::]:8081/metrics) needs an IPv6 socket: the server's default is IPv4.
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

        class Server(_Server):
            address_family = family

        self.server = make_server(host, port, app, Server, _Quiet)
        self.thread = threading.Thread(target=self.server.serve_forever, name="testenv-metrics", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        """The port it listens on (the one chosen, for port 0)."""
        port: int = self.server.server_address[1]
        return port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
