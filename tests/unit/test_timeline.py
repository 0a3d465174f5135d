"""The run's timeline: tests' reports become bars coloured by outcome, workers' events join the
run's, and the page is one self-contained file (no fetch) with the same events as JSON beside it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from testenv_harness.frontends import command_timeline, timeline, timeline_page
from testenv_harness.worker.logs import PodState

T = 1_800_000_000.0


def _report(
    nodeid: str, when: str, outcome: str, start: float, stop: float, **more: object
) -> pytest.TestReport:
    report = pytest.TestReport(
        nodeid,
        ("test_x.py", 1, nodeid),
        {},
        outcome,
        None,
        when,
        start=start,
        stop=stop,
        duration=stop - start,
    )
    report.__dict__.update(more)
    return report


def _test(
    line: timeline.Timeline, nodeid: str, call: str, row: int = 0, at: float = T, **more: object
) -> None:
    for when, outcome, start in (
        ("setup", "passed", at),
        ("call", call, at + 1),
        ("teardown", "passed", at + 2),
    ):
        line.report(
            _report(nodeid, when, outcome, start, start + 1, **(more if when == "call" else {})), row, "gw0"
        )


def test_each_test_is_one_bar_from_its_setup_to_its_teardown_with_its_outcome(tmp_path: Path) -> None:
    line = timeline.Timeline(tmp_path / "t.html")
    _test(line, "test_x.py::test_passes", "passed")
    _test(line, "test_x.py::test_fails", "failed", row=1, at=T + 5)
    _test(line, "test_x.py::test_skips", "skipped")
    _test(line, "test_x.py::test_xfails", "skipped", wasxfail="known")
    _test(line, "test_x.py::test_xpasses", "passed", wasxfail="known")
    line.report(_report("test_x.py::test_errs", "setup", "failed", T, T + 0.5), 1, "gw1")
    line.report(_report("test_x.py::test_errs", "teardown", "passed", T + 0.5, T + 0.6), 1, "gw1")
    tests = {e["name"].split("::")[1]: e for e in line.data()["events"] if e["kind"] == "test"}
    assert {name: e["outcome"] for name, e in tests.items()} == {
        "test_passes": "passed",
        "test_fails": "failed",
        "test_skips": "skipped",
        "test_xfails": "xfailed",
        "test_xpasses": "xpassed",
        "test_errs": "error",
    }
    failed = tests["test_fails"]
    assert (failed["row"], failed["lane"], failed["start"], failed["end"]) == (1, "tests", T + 5, T + 8)
    assert [p["when"] for p in failed["phases"]] == ["setup", "call", "teardown"]
    assert failed["detail"].startswith("failed on worker 1 (gw0): setup 1.00s, call 1.00s, teardown 1.00s")


def test_workers_events_join_the_runs_and_name_their_rows(tmp_path: Path) -> None:
    line = timeline.Timeline(tmp_path / "t.html")
    worker = timeline.WorkerEvents()
    worker.row, worker.namespace = 1, "te-run-1a2b3c-w1"
    worker.span(1, "waiting for the run's set-up", T, T + 2)
    worker.pods(
        1,
        [
            PodState(
                "redis",
                "redis-5d7f-x2k9q",
                "Running",
                True,
                0,
                created=T,
                scheduled=T + 1,
                started=T + 2,
                ready_at=T + 3,
            )
        ],
    )
    worker.pods(1, [PodState("kafka", "kafka-6c9d-a1b2c", "Pending", False, 0, created=T, scheduled=T + 1)])
    line.add_workeroutput({timeline.WORKEROUTPUT_KEY: json.dumps(worker.as_dict())})
    line.add_workeroutput({})  # a worker that crashed sends nothing
    line.add([timeline.event(None, "run", "set-up", "cluster", T - 5, T - 1)])
    _test(line, "test_x.py::test_one", "passed", row=1)
    data = line.data()
    assert data["run"]["rows"] == {1: {"namespace": "te-run-1a2b3c-w1", "xdist": ["gw0"]}}
    pods = [(e["lane"], e["phase"], e["end"] - e["start"]) for e in data["events"] if e["kind"] == "pod"]
    assert pods == [
        ("redis", "scheduling", 1.0),
        ("kafka", "scheduling", 1.0),
        ("redis", "starting", 1.0),
        ("redis", "becoming ready", 1.0),
    ]
    assert data["events"][0]["name"] == "cluster", "by time"


def test_the_page_and_its_json_are_written_and_the_page_fetches_nothing(tmp_path: Path) -> None:
    line = timeline.Timeline(tmp_path / "out" / "run.html")
    _test(line, "test_x.py::test_</script><script>alert(1)</script>", "failed")
    line.info.update(workers=1, name="example-1a2b3c", cluster="local testenv")
    page, beside = line.write()
    assert beside == tmp_path / "out" / "run.json"
    assert json.loads(beside.read_text())["events"][0]["outcome"] == "failed"
    text = page.read_text()
    assert text.count("</script>") == 2, "a test's name cannot end the page's data early"
    assert not re.search(r"""(src|href)\s*=|@import|url\(\s*['"]?(https?:)?//|<link""", text, re.I)
    data = json.loads(
        re.search(r'<script id="timeline-data" type="application/json">(.*?)</script>', text, re.S)[1]
    )  # type: ignore[index]
    assert data == json.loads(beside.read_text())


def test_a_run_with_no_events_still_renders() -> None:
    page = timeline_page.render({"version": 1, "run": {"started": T, "finished": T + 1}, "events": []})
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>kube-testenv timeline</title>" in page


def _spec(
    process: int, leaf: str, state: str, start: str, end: str, node: str = "It", **more: object
) -> dict:
    return {
        "ContainerHierarchyTexts": ["Orders"],
        "LeafNodeType": node,
        "LeafNodeText": leaf,
        "State": state,
        "StartTime": start,
        "EndTime": end,
        "ParallelProcess": process,
        **more,
    }


def test_a_ginkgo_report_puts_each_spec_on_its_processs_worker(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    specs = [
        _spec(
            1,
            "",
            "passed",
            "2026-12-06T10:00:00.5Z",
            "2026-12-06T10:00:01.25Z",
            node="SynchronizedBeforeSuite",
        ),
        _spec(1, "stores an order", "passed", "2026-12-06T10:00:01.123456789Z", "2026-12-06T10:00:02Z"),
        _spec(
            3,
            "reads it back",
            "failed",
            "2026-12-06T11:00:03+01:00",
            "2026-12-06T11:00:06+01:00",
            Failure={"Message": "Expected\n    <int>: 1\nto equal 2"},
        ),
        _spec(2, "waits its turn", "skipped", "0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
    ]
    report.write_text(json.dumps([{"SuiteDescription": "Orders", "SpecReports": specs}]))

    events = command_timeline.ginkgo_specs(report)

    setup, stored, failed = sorted(events, key=lambda e: e["start"])
    assert (setup["row"], setup["lane"], setup["name"]) == (0, "worker", "SynchronizedBeforeSuite")
    assert (stored["row"], stored["lane"], stored["kind"], stored["outcome"]) == (
        0,
        "tests",
        "test",
        "passed",
    )
    assert stored["name"] == "Orders::stores an order"
    assert stored["start"] == pytest.approx(1796551201.123456)
    assert stored["end"] == 1796551202.0
    assert (failed["row"], failed["outcome"]) == (2, "failed"), "process 3 ran on worker 2"
    assert failed["end"] - failed["start"] == 3.0
    assert failed["detail"].endswith("\nExpected"), "the failure's first line, for the hover"


@pytest.mark.parametrize("text", ["{not json", '{"SpecReports": []}', "[1, 2]"])
def test_what_is_not_a_ginkgo_report_is_refused_with_its_name(tmp_path: Path, text: str) -> None:
    report = tmp_path / "junit.xml"
    report.write_text(text)
    with pytest.raises(ValueError, match=r"--timeline-specs .*junit\.xml"):
        command_timeline.ginkgo_specs(report)
