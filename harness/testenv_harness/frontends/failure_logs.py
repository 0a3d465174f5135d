"""A failed test's report gets its worker's services: each pod's state (ready, restarts, last
termination) and the last lines each service wrote while that test ran.

They are report sections named `Captured log (testenv: worker 0 redis) call`, so whatever shows
a report's captured output shows them: the terminal's failure summary (and `-rA`), xdist (which
carries sections from its workers) and JUnit XML with `junit_logging = log` (or `all`), which
reads them from the test's last report: they go on the failed report and on the test item,
whose later reports carry them too (`item.add_report_section`). A worker marks each test's
start (worker/logs.py: the time, and on the local cluster each host log's size); on a failure it
reads what came after the mark, the last `testenv_log_lines` lines of it (0 turns this off).
`testenv logs` (cli_logs.py) prints the same for a worker on demand.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

import pytest

from testenv_harness.ground import k8s, kube
from testenv_harness.worker.logs import LogLines, Mark, PodState, ServiceLogs, clock

DEFAULT_LINES = 50
#: Every section's key starts so: pytest's reports count its section ("Captured log (...) call")
#: as captured log, which JUnit writes to system-out.
SECTION = "log (testenv: worker"

_WATCHER = pytest.StashKey["Watcher"]()
_MARK = pytest.StashKey[Mark]()


def state_text(pods: list[PodState], services: Sequence[str] = ()) -> list[str]:
    """One line per pod: `redis  pod redis-5d7f-x2k9q: ready, 0 restarts, ...`, and one for each
    of `services` with no pod at all."""
    missing = [name for name in services if all(p.service != name for p in pods)]
    width = max((len(name) for name in [*missing, *(p.service for p in pods)]), default=0)
    lines = [f"{p.service:<{width}}  pod {p.pod}: {p.describe()}" for p in pods]
    return lines + [f"{name:<{width}}  no pod (deleted, and its new one not made yet?)" for name in missing]


def lines_text(entry: LogLines, window: str) -> list[str]:
    """One source's lines under a heading that says where they come from and what was left out."""
    where = f"pod {entry.pod}, {entry.source}"
    if entry.note:
        return [f"{entry.service} ({where}): {entry.note}"]
    if not entry.lines:
        return [f"{entry.service} wrote nothing {window} ({where})"]
    count = len(entry.lines)
    if entry.left_out > 0:
        shown = f"the last {count} of {count + entry.left_out} lines"
    elif entry.left_out < 0:
        shown = f"the last {count} lines"
    else:
        shown = f"{count} line{'' if count == 1 else 's'}"
    return [f"{entry.service}: {shown} written {window} ({where}):", *entry.lines]


class Watcher:
    """One worker's services, watched test by test (in the process that runs the tests)."""

    def __init__(self, logs: ServiceLogs, worker: int, lines: int, services: list[str]) -> None:
        self.logs = logs
        self.worker = worker
        self.lines = lines
        #: The worker's services by name: one without a pod is said too.
        self.services = services

    def sections(self, mark: Mark) -> list[tuple[str, str]]:
        """The report sections (key, text) for a test that started at `mark` and failed now."""
        head = (
            f"worker {self.worker}, namespace {self.logs.namespace}: the test ran from {clock(mark.at)}, "
            f"{time.time() - mark.at:.1f}s until its failure"
        )
        try:
            pods = self.logs.pods()
        except k8s.ApiException as exc:
            return [(f"{SECTION} {self.worker})", f"{head}\ncannot list its pods: {kube.said(exc)}")]
        except k8s.HTTPError as exc:
            return [(f"{SECTION} {self.worker})", f"{head}\ncannot list its pods: {exc}")]
        state = "\n".join([head, *state_text(pods, self.services)])
        sections = [(f"{SECTION} {self.worker} services)", state)]
        window = "while the test ran"
        entries = self.logs.lines(mark, pods, self.lines)
        for service, group in itertools.groupby(entries, key=lambda e: e.service):
            text = "\n".join(line for entry in group for line in lines_text(entry, window))
            sections.append((f"{SECTION} {self.worker} {service})", text))
        return sections


def watch(config: pytest.Config, watcher: Watcher) -> None:
    """From now on, tests in this process are watched by `watcher`."""
    config.stash[_WATCHER] = watcher


def mark(item: pytest.Item) -> None:
    """The test `item` starts now (a no-op while nothing is watched)."""
    watcher = item.config.stash.get(_WATCHER, None)
    if watcher is not None:
        item.stash[_MARK] = watcher.logs.mark()


def attach(item: pytest.Item, report: pytest.TestReport) -> None:
    """Add the sections to a failed test's report; whatever goes wrong is said in a section."""
    watcher = item.config.stash.get(_WATCHER, None)
    started = item.stash.get(_MARK, None)
    if watcher is None or started is None or not report.failed:
        return
    try:
        sections = watcher.sections(started)
    except Exception as exc:  # the report must be made whatever the cluster says
        sections = [(f"{SECTION} {watcher.worker})", f"could not gather its services: {exc!r}")]
    for key, text in sections:
        report.sections.append((f"Captured {key} {report.when}", text))
        item.add_report_section(report.when, key, text)  # the test's later reports (JUnit's) carry it
