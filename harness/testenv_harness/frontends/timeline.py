"""A run's timeline: what happened when, worker by worker, written at the run's end as one
self-contained HTML page (timeline_page.py) and, beside it, the same events as JSON.

Every event is a dict (JSON as written):

    row      the worker (its slot, as its namespace's -wN says) or None for the run's own steps,
             which the page draws on every worker's row
    lane     where on the row: "run" (cluster, operator, ...), "worker" (its namespace, waiting,
             forwards, reset), a service's name (its pods and host processes) or "tests"
    kind     set-up | teardown | worker | pod | host | test | command (`testenv run`'s CMD)
    name     what it was (a step, a pod's phase, a test's node id)
    start, end   wall-clock seconds since the epoch
    outcome  tests: passed, failed, error, skipped, xfailed, xpassed; steps: failed, if they did
    phase    pods: scheduling, starting or becoming ready
    phases   tests: [{when, start, end}] of its setup, call and teardown
    detail   more words for the hover (optional)

The controller gathers them: the run session's steps (run/session.py), each worker's own (sent
through xdist's workeroutput, or kept in this process without xdist) and every test's reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest

from testenv_harness.frontends import timeline_page
from testenv_harness.ground import k8s
from testenv_harness.worker.logs import PodState, clock
from testenv_harness.worker.testenv import TestEnv

Event = dict[str, Any]
#: The key of a worker's events in xdist's workeroutput.
WORKEROUTPUT_KEY = "testenv_timeline"


def event(row: int | None, lane: str, kind: str, name: str, start: float, end: float, **more: Any) -> Event:
    return {"row": row, "lane": lane, "kind": kind, "name": name, "start": start, "end": end, **more}


def json_path(html: Path) -> Path:
    """Where the events are written beside the page: FILE with .json."""
    return html.with_suffix(".json")


# -- a worker's own events ------------------------------------------------------------------------


class WorkerEvents:
    """What one worker process did: its waits, forwards, reset and its pods' phases."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.row: int | None = None
        self.namespace = ""

    def as_dict(self) -> dict[str, Any]:
        """What the controller gets (`Timeline.add_worker`), through workeroutput as JSON."""
        return {"row": self.row, "namespace": self.namespace, "events": self.events}

    def span(self, row: int, name: str, start: float, end: float | None = None, **more: Any) -> None:
        self.events.append(
            event(row, "worker", "worker", name, start, time.time() if end is None else end, **more)
        )

    def connected(self, env: TestEnv) -> None:
        """The worker's waits and forwards (its connection's spans), and its pods' and namespace's
        times as the API server has them (one LIST; nothing if it is refused)."""
        row = self.row = env.worker
        self.namespace = env.namespace
        for name, start, end in env.spans:
            if name.endswith(("through its forward", "Service's DNS name")):
                service = name.split(" ", 1)[0]
                self.events.append(event(row, service, "worker", name, start, end))
            else:
                self.span(row, name, start, end)
        with contextlib.suppress(k8s.ApiException, k8s.HTTPError, OSError):
            self.pods(row, env.logs().pods())
        with contextlib.suppress(k8s.ApiException, k8s.HTTPError, OSError):
            namespace = env.core.read_namespace(env.namespace)
            created = namespace.metadata.creation_timestamp.timestamp()
            ready = max((end for name, _, end in env.spans if name.startswith("waiting for")), default=None)
            if ready is not None and ready >= created:
                detail = f"made by the operator at {clock(created)}; Ready {ready - created:.1f}s later"
                self.span(row, f"namespace {env.namespace}", created, ready, detail=detail)

    def pods(self, row: int, pods: list[PodState]) -> None:
        """Each pod's way to Ready: created -> scheduled -> started -> ready, as far as it went."""
        for pod in pods:
            marks = [
                ("scheduling", pod.created, pod.scheduled),
                ("starting", pod.scheduled, pod.started),
                ("becoming ready", pod.started, pod.ready_at),
            ]
            for phase, start, end in marks:
                if start is not None and end is not None and end >= start:
                    name = f"pod {pod.pod}: {phase}"
                    detail = f"{pod.service} now: {pod.describe()}"
                    self.events.append(
                        event(row, pod.service, "pod", name, start, end, phase=phase, detail=detail)
                    )


# -- the controller's collection ------------------------------------------------------------------


def _outcome(reports: list[pytest.TestReport]) -> str:
    for report in reports:
        if report.failed:
            return "failed" if report.when == "call" else "error"
    call = next((r for r in reports if r.when == "call"), None)
    if any(r.skipped for r in reports):
        return "xfailed" if call is not None and hasattr(call, "wasxfail") else "skipped"
    if call is not None and hasattr(call, "wasxfail"):
        return "xpassed"
    return "passed"


def _crash(report: pytest.TestReport) -> str:
    """The one line pytest's short summary gives a failure."""
    crash = getattr(report.longrepr, "reprcrash", None)
    message = str(getattr(crash, "message", "") or "")
    if not message:
        lines = report.longreprtext.strip().splitlines()
        message = lines[-1] if lines else ""
    return message.splitlines()[0][:200] if message else ""


@dataclasses.dataclass
class _Test:
    row: int
    worker_id: str
    reports: list[pytest.TestReport] = dataclasses.field(default_factory=list)


class Timeline:
    """Everything the page shows, gathered in the controller (or the only process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = time.time()
        self.events: list[Event] = []
        self.tests: dict[str, _Test] = {}
        self.info: dict[str, Any] = {}
        #: Per worker: its namespace and the xdist workers (gw0, ...) that were it.
        self.rows: dict[int, dict[str, Any]] = {}

    def add(self, events: list[Event]) -> None:
        self.events += events

    def add_worker(self, worker: dict[str, Any]) -> None:
        """A worker's events and where it ran (`WorkerEvents.as_dict`)."""
        self.add(list(worker.get("events") or []))
        if worker.get("row") is not None and worker.get("namespace"):
            self.rows.setdefault(int(worker["row"]), {})["namespace"] = str(worker["namespace"])

    def add_workeroutput(self, workeroutput: dict[str, Any]) -> None:
        """A finished xdist worker's events."""
        with contextlib.suppress(KeyError, ValueError, TypeError, AttributeError):
            self.add_worker(json.loads(workeroutput[WORKEROUTPUT_KEY]))

    def report(self, report: pytest.TestReport, row: int, worker_id: str) -> None:
        test = self.tests.setdefault(report.nodeid, _Test(row, worker_id))
        test.reports.append(report)

    def _test_events(self) -> list[Event]:
        events = []
        for nodeid, test in self.tests.items():
            reports = test.reports
            outcome = _outcome(reports)
            took = ", ".join(f"{r.when} {r.stop - r.start:.2f}s" for r in reports)
            where = f"worker {test.row}" + (f" ({test.worker_id})" if test.worker_id else "")
            detail = f"{outcome} on {where}: {took}"
            failed = next((r for r in reports if r.failed), None)
            if failed is not None and (crash := _crash(failed)):
                detail += f"\n{crash}"
            start, end = min(r.start for r in reports), max(r.stop for r in reports)
            phases = [{"when": r.when, "start": r.start, "end": r.stop} for r in reports]
            more = {"outcome": outcome, "detail": detail, "phases": phases}
            events.append(event(test.row, "tests", "test", nodeid, start, end, **more))
        return events

    def data(self) -> dict[str, Any]:
        events = sorted([*self.events, *self._test_events()], key=lambda e: (e["start"], e["end"]))
        rows = {row: dict(info) for row, info in self.rows.items()}
        for test in self.tests.values():
            xdist = rows.setdefault(test.row, {}).setdefault("xdist", [])
            if test.worker_id and test.worker_id not in xdist:
                xdist.append(test.worker_id)
        run = {"started": self.started, "finished": time.time(), **self.info, "rows": rows}
        return {"version": 1, "run": run, "events": events}

    def write(self) -> tuple[Path, Path]:
        """The page and the JSON beside it; their paths."""
        data = self.data()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(timeline_page.render(data))
        beside = json_path(self.path)
        beside.write_text(json.dumps(data, indent=1))
        return self.path, beside
