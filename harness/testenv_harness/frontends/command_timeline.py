"""`testenv run --timeline FILE`: the same page as the plugin's, for a run of any command.

The rows are the run's workers, with the run's steps (cluster, operator, environment, teardown),
each worker's waits, forwards and pods, and the command itself as a run step. The command's tests
are drawn only where a report says when each ran and on which worker: a Ginkgo JSON report
(`ginkgo --json-report FILE`, given with --timeline-specs FILE), whose spec on parallel process P
ran against worker P-1 (`testenv run` gives process P the variables ending in _{P-1}).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from testenv_harness.frontends.timeline import Event, Timeline, WorkerEvents, event
from testenv_harness.run.session import RunSession
from testenv_harness.worker.testenv import TestEnv

#: Ginkgo's spec states, as the page's test outcomes.
_OUTCOMES = {
    "passed": "passed",
    "skipped": "skipped",
    "pending": "skipped",
    "failed": "failed",
    "panicked": "failed",
    "timedout": "failed",
    "interrupted": "error",
    "aborted": "error",
}
_FRACTION = re.compile(r"(\.\d{6})\d+")


def _when(text: str) -> float | None:
    """A Go time in JSON (RFC 3339, up to nanoseconds) as seconds since the epoch; None for zero."""
    if not text or text.startswith("0001-01-01"):
        return None
    at = datetime.datetime.fromisoformat(_FRACTION.sub(r"\1", text.replace("Z", "+00:00")))
    return at.timestamp()


def ginkgo_specs(report: Path) -> list[Event]:
    """The specs of a Ginkgo JSON report as test events, on the row of the worker that ran them.

    Raises ValueError naming the file when it is not such a report."""
    try:
        suites = json.loads(report.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--timeline-specs {report}: not a readable JSON file ({exc})") from exc
    if not isinstance(suites, list) or not all(isinstance(s, dict) for s in suites):
        raise ValueError(f"--timeline-specs {report}: not a Ginkgo JSON report (ginkgo --json-report FILE)")
    events: list[Event] = []
    for suite in suites:
        for spec in suite.get("SpecReports") or []:
            start, end = _when(str(spec.get("StartTime") or "")), _when(str(spec.get("EndTime") or ""))
            if start is None or end is None or end < start:
                continue  # never ran (skipped before it started)
            row = max(int(spec.get("ParallelProcess") or 1), 1) - 1
            state = str(spec.get("State") or "passed")
            node = str(spec.get("LeafNodeType") or "It")
            if node != "It":  # BeforeSuite and the like: the process's own set-up
                more = {"outcome": "failed"} if _OUTCOMES.get(state) in ("failed", "error") else {}
                events.append(event(row, "worker", "worker", node, start, end, **more))
                continue
            texts = [*(spec.get("ContainerHierarchyTexts") or []), str(spec.get("LeafNodeText") or "")]
            outcome = _OUTCOMES.get(state, "error")
            detail = f"{state} on worker {row} (Ginkgo process {row + 1}): {end - start:.2f}s"
            failure = spec.get("Failure") or {}
            if message := str(failure.get("Message") or "").strip():
                detail += "\n" + message.splitlines()[0][:200]
            name = "::".join(t for t in texts if t)
            events.append(event(row, "tests", "test", name, start, end, outcome=outcome, detail=detail))
    return events


class CommandTimeline:
    """What `testenv run` records for its page, and the page's writing at the end."""

    def __init__(self, page: Path, specs: Path | None, command: str) -> None:
        self.timeline = Timeline(page)
        self.specs = specs
        self.command = command
        self._began: float | None = None
        self._session: RunSession | None = None

    def set_up(self, session: RunSession | None) -> None:
        """The run is set up (or failed to be): its session records the steps, teardown included."""
        self._session = session

    def command_started(self) -> None:
        self._began = time.time()

    def command_ended(self, status: int, envs: list[TestEnv]) -> None:
        """The command's own bar, and each worker's waits, forwards and pods (read before teardown)."""
        if self._began is not None:
            more = {"outcome": "failed"} if status else {}
            detail = f"exit status {status}"
            self.timeline.add(
                [event(None, "run", "command", self.command, self._began, time.time(), detail=detail, **more)]
            )
        for env in envs:
            worker = WorkerEvents()
            with contextlib.suppress(Exception):  # a worker's events never fail the run
                worker.connected(env)
            self.timeline.add_worker(worker.as_dict())

    def write(self, name: str, workers: int, cluster: str, say: Callable[[str], None]) -> None:
        """The page and its JSON, after teardown; a bad spec report is said, and the page still written."""
        if self._session is not None:
            self.timeline.add(list(self._session.timeline))
        if self.specs is not None:
            try:
                self.timeline.add(ginkgo_specs(self.specs))
            except ValueError as exc:
                say(f"{exc}; the timeline has no tests")
        self.timeline.info.update(workers=workers, name=name, cluster=cluster)
        try:
            page, events = self.timeline.write()
        except OSError as exc:
            say(f"could not write the timeline to {self.timeline.path}: {exc}")
            return
        say(f"timeline: {page} (events: {events})")
