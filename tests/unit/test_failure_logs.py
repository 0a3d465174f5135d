"""A failed test's report shows its worker's services: their state, and the lines each wrote while
the test ran (bounded), from the local data plane's host logs or the API's pod logs.

No cluster: a fake CoreV1Api answers the pod list and pod logs; host logs are real files laid out
as the data plane lays them out (<root>/<namespace>/<pod>/process.log).
"""

from __future__ import annotations

import json
import textwrap
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from testenv_api import LABEL_SERVICE
from testenv_harness.frontends import cli, cli_logs, failure_logs
from testenv_harness.worker.logs import READ_LIMIT, Mark, ServiceLogs, pod_state, read_from

NAMESPACE = "te-run-1a2b3c-w0"


def _pod(name: str, service: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {LABEL_SERVICE: service},
            "creationTimestamp": "2026-01-02T10:00:00Z",
        },
        "spec": {"containers": [{"name": service}]},
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-02T10:00:01Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-02T10:00:04Z"},
            ],
            "containerStatuses": [
                {
                    "name": service,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": "2026-01-02T10:00:02Z"}},
                }
            ],
            **status,
        },
    }


class FakeCore:
    """The two calls ServiceLogs makes, answered from `pods` and `logs` (pod name -> text)."""

    def __init__(self, pods: list[dict[str, Any]], logs: dict[str, str] | None = None) -> None:
        self.pods = pods
        self.logs = logs or {}
        self.refuse = False
        self.log_calls: list[dict[str, Any]] = []

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> Any:
        selector = kwargs["label_selector"]
        wanted = selector.split("=", 1)[1] if "=" in selector else None
        items = [p for p in self.pods if wanted is None or p["metadata"]["labels"][LABEL_SERVICE] == wanted]
        return types.SimpleNamespace(data=json.dumps({"items": items}).encode())

    def read_namespaced_pod_log(self, name: str, namespace: str, **kwargs: Any) -> Any:
        self.log_calls.append({"name": name, **kwargs})
        if self.refuse:
            exc = ApiException(status=403, reason="Forbidden")
            exc.body = json.dumps(
                {"message": 'pods "x" is forbidden: User "ci" cannot get resource "pods/log"'}
            )
            raise exc
        lines = self.logs.get(name + (":previous" if kwargs.get("previous") else ""), "").splitlines()
        if kwargs.get("tail_lines") is not None:
            lines = lines[-kwargs["tail_lines"] :]
        return types.SimpleNamespace(data="".join(f"{line}\n" for line in lines).encode())


def _host_log(root: Path, pod: str, text: str, name: str = "process.log") -> Path:
    folder = root / NAMESPACE / pod
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with path.open("a") as handle:
        handle.write(text)
    return path


# -- the local data plane's host logs -------------------------------------------------------------


def test_a_host_log_shows_what_came_after_the_mark_and_at_most_n_lines(tmp_path: Path) -> None:
    _host_log(tmp_path, "redis-5d7f-x2k9q", "* Ready to accept connections\n")
    logs = ServiceLogs(FakeCore([_pod("redis-5d7f-x2k9q", "redis")]), NAMESPACE, tmp_path)
    mark = logs.mark()
    _host_log(tmp_path, "redis-5d7f-x2k9q", "".join(f"- Accepted {n}\n" for n in range(5)))
    (entry,) = logs.lines(mark, logs.pods(), tail=3)
    assert entry.lines == ("- Accepted 2", "- Accepted 3", "- Accepted 4")
    assert entry.left_out == 2
    assert entry.source.startswith("host process log ")
    assert entry.source.endswith("process.log")
    assert failure_logs.lines_text(entry, "while the test ran")[0].startswith(
        "redis: the last 3 of 5 lines written while the test ran (pod redis-5d7f-x2k9q, host process log "
    )


def test_a_pod_made_after_the_mark_is_read_from_its_start_and_kafkas_own_log_too(tmp_path: Path) -> None:
    logs = ServiceLogs(FakeCore([_pod("kafka-6c9d-a1b2c", "kafka")]), NAMESPACE, tmp_path)
    mark = logs.mark()
    _host_log(tmp_path, "kafka-6c9d-a1b2c", "started\n")
    _host_log(tmp_path, "kafka-6c9d-a1b2c", "INFO KafkaServer started\n", name="kafka.log")
    entries = logs.lines(mark, logs.pods(), tail=50)
    assert [(e.source.rsplit("/", 1)[1], e.lines) for e in entries] == [
        ("process.log", ("started",)),
        ("kafka.log", ("INFO KafkaServer started",)),
    ]


def test_nothing_written_says_so_and_a_missing_log_says_why(tmp_path: Path) -> None:
    _host_log(tmp_path, "redis-5d7f-x2k9q", "old\n")
    core = FakeCore([_pod("redis-5d7f-x2k9q", "redis"), _pod("aws-7f8e-z9y8x", "aws")])
    logs = ServiceLogs(core, NAMESPACE, tmp_path)
    mark = logs.mark()
    aws, redis = logs.lines(mark, logs.pods(), tail=50)
    assert "no host process log" in aws.note
    assert failure_logs.lines_text(redis, "while the test ran") == [
        f"redis wrote nothing while the test ran (pod redis-5d7f-x2k9q, {redis.source})"
    ]


def test_a_log_shorter_than_its_mark_is_read_from_its_start_and_a_huge_one_from_its_end(
    tmp_path: Path,
) -> None:
    path = _host_log(tmp_path, "redis-5d7f-x2k9q", "a fresh file\n")
    assert read_from(path, 10_000) == (["a fresh file"], False)
    path.write_text("x" * 10 + "\n" + "y" * (READ_LIMIT + 100) + "\nlast\n")
    lines, cut = read_from(path, 0)
    assert cut
    assert lines[-1] == "last"
    assert all(not line.startswith("x") for line in lines)


def test_host_pods_say_whether_their_process_runs(tmp_path: Path) -> None:
    _host_log(tmp_path, "redis-5d7f-x2k9q", "")
    (state,) = ServiceLogs(FakeCore([_pod("redis-5d7f-x2k9q", "redis")]), NAMESPACE, tmp_path).pods()
    assert state.host_pid == 0
    assert state.describe() == (
        "ready, 0 restarts, no host process runs for it (it exited, or the data plane stopped it)"
    )


# -- pods through the API -------------------------------------------------------------------------


def test_pod_state_names_restarts_the_last_termination_and_a_wait() -> None:
    crashed = _pod(
        "kafka-6c9d-a1b2c",
        "kafka",
        phase="Running",
        conditions=[{"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-02T10:01:00Z"}],
        containerStatuses=[
            {
                "name": "kafka",
                "restartCount": 2,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
                "lastState": {
                    "terminated": {
                        "reason": "OOMKilled",
                        "exitCode": 137,
                        "finishedAt": "2026-01-02T10:00:59Z",
                    }
                },
            }
        ],
    )
    state = pod_state(crashed)
    assert (state.service, state.ready, state.restarts) == ("kafka", False, 2)
    assert state.last_termination.startswith("OOMKilled (exit 137) at ")
    assert state.describe().startswith(
        "not ready (phase Running), 2 restarts, waiting: CrashLoopBackOff (back-off 20s), "
        "last terminated: OOMKilled (exit 137) at "
    )
    ready = pod_state(_pod("redis-5d7f-x2k9q", "redis"))
    assert ready.describe() == "ready, 0 restarts"
    times = (ready.created, ready.scheduled, ready.started, ready.ready_at)
    assert None not in times
    assert sorted(times) == list(times)  # type: ignore[type-var]
    assert len(set(times)) == 4


def test_api_logs_are_asked_for_since_the_mark_and_bounded() -> None:
    core = FakeCore([_pod("redis-5d7f-x2k9q", "redis")], {"redis-5d7f-x2k9q": "one\ntwo\nthree\nfour\n"})
    logs = ServiceLogs(core, NAMESPACE)
    mark = Mark(time.time() - 4.2)
    (entry,) = logs.lines(mark, logs.pods(), tail=2)
    (call,) = core.log_calls
    assert call["since_seconds"] in (6, 7)  # 4.2s rounded up, and one more
    assert call["tail_lines"] == 3  # one more than shown, to know whether lines were left out
    assert (entry.lines, entry.left_out) == (("three", "four"), -1)
    assert failure_logs.lines_text(entry, "while the test ran")[0] == (
        "redis: the last 2 lines written while the test ran (pod redis-5d7f-x2k9q, pod log):"
    )
    (whole,) = logs.lines(Mark(0.0), logs.pods(), tail=-1)
    assert core.log_calls[-1]["since_seconds"] is None
    assert core.log_calls[-1]["tail_lines"] is None
    assert whole.lines == ("one", "two", "three", "four")


def test_a_container_that_ended_during_the_test_shows_its_last_run_too() -> None:
    pod = _pod(
        "kafka-6c9d-a1b2c",
        "kafka",
        containerStatuses=[
            {
                "name": "kafka",
                "restartCount": 1,
                "state": {"running": {}},
                "lastState": {
                    "terminated": {"reason": "Error", "exitCode": 1, "finishedAt": "2099-01-01T00:00:00Z"}
                },
            }
        ],
    )
    core = FakeCore(
        [pod], {"kafka-6c9d-a1b2c:previous": "FATAL out of disk\n", "kafka-6c9d-a1b2c": "starting\n"}
    )
    logs = ServiceLogs(core, NAMESPACE)
    previous, current = logs.lines(Mark(time.time() - 1), logs.pods(), tail=10)
    assert previous.source == "pod log of the previous container run"
    assert previous.lines == ("FATAL out of disk",)
    assert current.lines == ("starting",)


def test_a_refused_pod_log_is_said_in_the_section_not_raised() -> None:
    core = FakeCore([_pod("redis-5d7f-x2k9q", "redis")])
    core.refuse = True
    logs = ServiceLogs(core, NAMESPACE, grant="the chart's worker-access role grants get pods/log")
    (entry,) = logs.lines(Mark(time.time()), logs.pods(), tail=10)
    assert entry.lines == ()
    assert entry.note.startswith('the cluster refused to read its log (403 Forbidden: pods "x" is forbidden')
    assert entry.note.endswith("; the chart's worker-access role grants get pods/log")


# -- the sections -----------------------------------------------------------------------------------


def test_sections_are_captured_log_one_for_the_state_and_one_per_service(tmp_path: Path) -> None:
    _host_log(tmp_path, "redis-5d7f-x2k9q", "before\n")
    logs = ServiceLogs(FakeCore([_pod("redis-5d7f-x2k9q", "redis")]), NAMESPACE, tmp_path)
    watcher = failure_logs.Watcher(logs, 3, 50, ["redis", "kafka"])
    mark = logs.mark()
    _host_log(tmp_path, "redis-5d7f-x2k9q", "during\n")
    (state_title, state), (redis_title, redis) = watcher.sections(mark)
    assert state_title == "log (testenv: worker 3 services)"
    assert state.splitlines()[0].startswith(f"worker 3, namespace {NAMESPACE}: the test ran from ")
    assert state.splitlines()[1:] == [
        "redis  pod redis-5d7f-x2k9q: ready, 0 restarts, no host process runs for it (it exited, or the "
        "data plane stopped it)",
        "kafka  no pod (deleted, and its new one not made yet?)",
    ]
    assert redis_title == "log (testenv: worker 3 redis)"
    assert redis.splitlines()[1:] == ["during"]


def test_attach_adds_sections_to_failed_reports_and_the_item_and_survives_any_error() -> None:
    class Broken(ServiceLogs):
        def pods(self, service: str | None = None) -> Any:
            raise RuntimeError("boom")

    config = types.SimpleNamespace(stash=pytest.Stash())
    later: list[tuple[str, str, str]] = []
    item: Any = types.SimpleNamespace(
        config=config, stash=pytest.Stash(), add_report_section=lambda *section: later.append(section)
    )
    watcher = failure_logs.Watcher(Broken(FakeCore([]), NAMESPACE), 0, 50, [])  # type: ignore[arg-type]
    failure_logs.watch(config, watcher)  # type: ignore[arg-type]
    failure_logs.mark(item)
    passed: Any = types.SimpleNamespace(failed=False, when="call", sections=[])
    failed: Any = types.SimpleNamespace(failed=True, when="call", sections=[])
    failure_logs.attach(item, passed)
    failure_logs.attach(item, failed)
    assert passed.sections == []
    said = "could not gather its services: RuntimeError('boom')"
    assert failed.sections == [("Captured log (testenv: worker 0) call", said)]
    assert later == [("call", "log (testenv: worker 0)", said)], "the teardown report (JUnit's) has it too"


CONFTEST = textwrap.dedent(
    """
    import json, os, types
    from pathlib import Path

    import pytest

    from testenv_harness.frontends import failure_logs
    from testenv_harness.worker.logs import ServiceLogs


    class Core:
        def list_namespaced_pod(self, namespace, **kwargs):
            pod = {
                "metadata": {"name": "redis-5d7f-x2k9q", "namespace": namespace,
                             "labels": {"testenv.dev/service": "redis"}},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
            }
            return types.SimpleNamespace(data=json.dumps({"items": [pod]}).encode())


    def log(request):
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        path = Path(os.environ["HOST_ROOT"]) / worker / "redis-5d7f-x2k9q" / "process.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


    @pytest.fixture(autouse=True)
    def watched(request):
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        logs = ServiceLogs(Core(), worker, Path(os.environ["HOST_ROOT"]))
        failure_logs.watch(request.config, failure_logs.Watcher(logs, int(worker[2:]), 2, ["redis"]))
        with log(request).open("a") as handle:
            handle.write(f"before {request.node.name}\\n")
        failure_logs.mark(request.node)
    """
)
TESTS = textwrap.dedent(
    """
    import pytest
    from conftest import log


    @pytest.mark.parametrize("n", range(4))
    def test_writes_then_fails_or_not(request, n):
        with log(request).open("a") as handle:
            handle.write("".join(f"during {request.node.name} {k}\\n" for k in range(3)))
        assert n % 2 == 0, "odd ones fail"
    """
)


def test_the_sections_reach_the_terminal_xdist_and_junit_with_ra(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOST_ROOT", str(tmp_path))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_sections=TESTS)
    pytester.syspathinsert()
    report = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-n", "2", "-rA", f"--junitxml={report}", "-o", "junit_logging=log"
    )  # fmt: skip
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*Captured log (testenv: worker ? services) call*",
            "redis  pod redis-5d7f-x2k9q: ready, 0 restarts, no host process runs for it*",
            "*Captured log (testenv: worker ? redis) call*",
            "redis: the last 2 of 3 lines written while the test ran (pod redis-5d7f-x2k9q, host process *",
            "during test_writes_then_fails_or_not[[]?[]] 1",
            "during test_writes_then_fails_or_not[[]?[]] 2",
        ]
    )
    out = result.stdout.str()
    assert out.count("Captured log (testenv: worker") == 2 * 2, "failed tests only, two sections each"
    assert "before test_writes" not in out, "lines from before the test started"
    failed = [c for c in ET.parse(report).getroot().iter("testcase") if c.find("failure") is not None]
    assert len(failed) == 2
    for case in failed:
        captured = "".join(e.text or "" for e in case.iter("system-out"))
        assert f"during {case.get('name')} 2" in captured
        assert "ready, 0 restarts" in captured


# -- options and the CLI ------------------------------------------------------------------------------


@pytest.mark.parametrize("given", [["--testenv-log-lines=-1"], ["-o", "testenv_log_lines=many"]])
def test_a_bad_line_count_is_a_usage_error_before_anything_starts(
    pytester: pytest.Pytester, given: list[str]
) -> None:
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--testenv", *given)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*kube-testenv: testenv_log_lines = *: give a number of lines, 0 for none*"])


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("5m", 300.0), ("1h30m", 5400.0), ("1.5m", 90.0)]
)
def test_since_takes_durations(text: str, seconds: float) -> None:
    assert cli_logs.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "m", "-5s"])
def test_since_refuses_what_is_no_duration(text: str) -> None:
    with pytest.raises(ValueError, match="give a duration such as 90s, 5m or 1h30m"):
        cli_logs.parse_duration(text)


def test_testenv_logs_is_a_command() -> None:
    args = cli._parser().parse_args(["logs", "kafka", "--worker", "1", "--since", "5m", "--run", "ci"])
    assert (args.func, args.service, args.worker, args.since, args.run, args.tail) == (
        cli_logs.cmd_logs,
        "kafka",
        1,
        "5m",
        "ci",
        cli_logs.DEFAULT_TAIL,
    )
