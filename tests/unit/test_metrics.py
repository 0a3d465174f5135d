"""The operator's Prometheus metrics: what each one counts, its own registry, its endpoint, the
setting that places it, and the docs' list of them."""

from __future__ import annotations

import asyncio
import datetime
import http.server
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from testenv_api import Phase
from testenv_operator import handlers, kubeio, metrics
from testenv_operator.election import Timeouts
from testenv_operator.metrics import METRICS, Metrics
from testenv_operator.runtime import Runtime
from testenv_operator.settings import Settings, SettingsError
from tests.unit.plain_http_api import use_server

ROOT = Path(__file__).resolve().parents[2]


def samples(m: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """A metric's samples by their sorted labels (a family's own name, or a sample's: x_count)."""
    found = {}
    for family in text_string_to_metric_families(m.scrape()):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(m: Metrics, name: str, **labels: str) -> float:
    return samples(m, name)[tuple(sorted(labels.items()))]


def body(uid: str, phase: str | None = None, **meta: Any) -> dict[str, Any]:
    status = {"phase": phase} if phase else {}
    return {"metadata": {"uid": uid, "namespace": "team", "name": uid, **meta}, "status": status}


# -- the list of them ---------------------------------------------------------------------------


def test_docs_operator_md_lists_every_metric_with_its_labels() -> None:
    assert metrics.table() in (ROOT / "docs" / "operator.md").read_text(), (
        "docs/operator.md's metrics table is not metrics.METRICS': paste metrics.table()"
    )


def test_every_described_metric_is_on_the_page_with_its_type_and_labels() -> None:
    m = Metrics()
    families = {f.name: f for f in text_string_to_metric_families(m.scrape())}
    for described in METRICS:
        name = described.name.removesuffix("_total")  # the parser names a counter's family without it
        assert name in families, described.name
        assert families[name].type == described.type, described.name
        assert families[name].documentation == described.text, described.name
        assert "`" not in described.text
        for sample in families[name].samples:
            assert set(sample.labels) - {"le"} == set(described.labels), (described.name, sample)
    assert "process_cpu_seconds_total" in m.scrape()


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.events_folded.inc()
    assert value(first, "testenv_events_folded_total") == 1
    assert value(second, "testenv_events_folded_total") == 0
    global_page = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "testenv_" not in global_page


# -- what the watches show -------------------------------------------------------------------------


def test_environments_by_phase_follow_the_events_and_show_every_phase() -> None:
    m = Metrics()
    assert {dict(k)["phase"]: v for k, v in samples(m, "testenv_environments").items()} == {
        p.value: 0 for p in Phase
    }
    m.saw_environment(body("a"))  # new: no status yet
    m.saw_environment(body("b", "Ready"))
    m.saw_environment(body("c", "Ready"))
    assert value(m, "testenv_environments", phase="Pending") == 1
    assert value(m, "testenv_environments", phase="Ready") == 2
    m.saw_environment(body("a", "Provisioning"))
    m.saw_environment(body("b", "Ready", deletionTimestamp="2030-01-01T00:00:00Z"))
    assert value(m, "testenv_environments", phase="Pending") == 0
    assert value(m, "testenv_environments", phase="Provisioning") == 1
    assert value(m, "testenv_environments", phase="Terminating") == 1
    m.saw_environment(body("b", "Terminating"), deleted=True)
    assert value(m, "testenv_environments", phase="Terminating") == 0
    m.saw_environment(body("c", "Sideways"))  # a phase written by a newer operator: still counted
    assert value(m, "testenv_environments", phase="Sideways") == 1
    assert value(m, "testenv_environments", phase="Ready") == 0


def test_pools_by_phase_and_their_workers() -> None:
    m = Metrics()
    pool = {
        "metadata": {"uid": "p1", "namespace": "team", "name": "redis"},
        "status": {"phase": "Filling", "free": 3, "ready": 1, "claimed": 2},
    }
    m.saw_pool({"metadata": {"uid": "p2", "namespace": "team", "name": "new"}})
    m.saw_pool(pool)
    assert value(m, "testenv_pools", phase="Filling") == 2
    assert value(m, "testenv_pools", phase="Ready") == 0
    where = {"namespace": "team", "pool": "redis"}
    assert value(m, "testenv_pool_workers_free", **where) == 3
    assert value(m, "testenv_pool_workers_ready", **where) == 1
    assert value(m, "testenv_pool_workers_claimed", **where) == 2
    m.saw_pool(pool, deleted=True)
    assert samples(m, "testenv_pool_workers_free") == {(("namespace", "team"), ("pool", "new")): 0}


# -- what happens ----------------------------------------------------------------------------------


def test_a_pass_is_counted_and_timed_by_kind_depth_and_result() -> None:
    m = Metrics()
    assert value(m, "testenv_passes_total", kind="environment", result="ok") == 0
    with m.timing_pass("environment", "apply"):
        pass
    with pytest.raises(RuntimeError), m.timing_pass("pool", "fill"):
        raise RuntimeError("refused")
    assert value(m, "testenv_passes_total", kind="environment", result="ok") == 1
    assert value(m, "testenv_passes_total", kind="pool", result="failed") == 1
    assert value(m, "testenv_pass_duration_seconds_count", kind="environment", depth="apply") == 1
    assert value(m, "testenv_pass_duration_seconds_count", kind="pool", depth="fill") == 1
    assert value(m, "testenv_pass_duration_seconds_count", kind="environment", depth="report") == 0


def _runtime() -> Runtime:
    return Runtime(None, Settings(), None, None, None)  # type: ignore[arg-type]  # no API: wake, run_pass


def test_a_wake_up_of_a_waker_already_set_is_counted_as_folded() -> None:
    runtime = _runtime()
    runtime.wakers["a"] = asyncio.Event()
    runtime.wake("a")
    runtime.wake("nobody")
    assert value(runtime.metrics, "testenv_events_folded_total") == 0
    runtime.wake("a")
    runtime.wake("a")
    assert value(runtime.metrics, "testenv_events_folded_total") == 2
    runtime.wakers["a"].clear()  # the converger took it: the next event wakes it anew
    runtime.wake("a")
    assert value(runtime.metrics, "testenv_events_folded_total") == 2


def test_run_pass_times_the_pass_with_its_labels() -> None:
    runtime = _runtime()
    runtime.threads = ThreadPoolExecutor(2)

    async def passes() -> None:
        lock = asyncio.Lock()
        assert await runtime.run_pass(lock, lambda: 7, kind="environment", depth="report") == 7
        with pytest.raises(ZeroDivisionError):
            await runtime.run_pass(lock, lambda: 1 / 0, kind="pool", depth="resync")

    try:
        asyncio.run(passes())
    finally:
        runtime.threads.shutdown()
    m = runtime.metrics
    assert value(m, "testenv_passes_total", kind="environment", result="ok") == 1
    assert value(m, "testenv_passes_total", kind="pool", result="failed") == 1
    assert value(m, "testenv_pass_duration_seconds_count", kind="environment", depth="report") == 1


def _created(seconds_ago: float) -> str:
    then = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds_ago)
    return then.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("before", "generation", "pooled", "measured"),
    [
        (None, 1, False, True),
        ("Provisioning", 1, True, True),
        ("Failed", 1, False, True),  # waited for room under a limit: that wait counts too
        ("Degraded", 1, False, False),  # Ready before: not its first
        ("Ready", 1, False, False),  # Ready before this process started
        ("Provisioning", 2, False, False),  # the spec changed: the time would not be the creation's
    ],
)
def test_the_first_ready_of_an_unchanged_spec_is_measured_from_its_creation(
    before: str | None, generation: int, pooled: bool, measured: bool
) -> None:
    m = Metrics()
    snapshot = body("e", before, creationTimestamp=_created(42), generation=generation)
    worker = {"index": 0, "phase": "Ready", **({"pool": "warm"} if pooled else {})}
    handlers._measure_first_ready(m, snapshot, {"phase": "Ready", "workers": [worker]})
    label = "true" if pooled else "false"
    assert value(m, "testenv_environment_ready_seconds_count", pooled=label) == int(measured)
    if measured:
        seconds = value(m, "testenv_environment_ready_seconds_sum", pooled=label)
        assert 41 <= seconds <= 60
        assert value(m, "testenv_environment_ready_seconds_bucket", pooled=label, le="60.0") == 1
        assert value(m, "testenv_environment_ready_seconds_bucket", pooled=label, le="30.0") == 0


def test_a_creation_stamped_ahead_of_our_clock_counts_as_zero() -> None:
    m = Metrics()
    handlers._measure_first_ready(m, body("e", creationTimestamp=_created(-30)), {"phase": "Ready"})
    assert value(m, "testenv_environment_ready_seconds_sum", pooled="false") == 0


# -- the API server's refusals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "phrase", "answer", "reason"),
    [
        (404, "Not Found", {"kind": "Status", "reason": "NotFound"}, "NotFound"),
        (409, "Conflict", {"kind": "Status", "reason": "AlreadyExists"}, "AlreadyExists"),
        (502, "Bad Gateway", "<html>proxy</html>", "BadGateway"),
        (500, "", "", "500"),
        (422, "Unprocessable Entity", {"reason": "not one word!"}, "UnprocessableEntity"),
        (418, "I'm a teapot", [], "418"),
    ],
)
def test_a_refusal_reason_is_one_word_from_a_fixed_set(
    status: int, phrase: str, answer: Any, reason: str
) -> None:
    text = answer if isinstance(answer, str) else json.dumps(answer)
    assert kubeio.refusal_reason(status, phrase, text.encode()) == reason


class _Refuser(http.server.BaseHTTPRequestHandler):
    """Answers 409 AlreadyExists to a POST, 404 NotFound to anything else."""

    def answer(self, code: int, reason: str) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        page = json.dumps({"kind": "Status", "code": code, "reason": reason}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def do_GET(self) -> None:
        self.answer(404, "NotFound")

    def do_DELETE(self) -> None:
        self.answer(404, "NotFound")

    def do_POST(self) -> None:
        self.answer(409, "AlreadyExists")

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def refuser() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuser)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_the_clients_failed_calls_are_counted_by_reason(
    refuser: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = Metrics()
    use_server(tmp_path, refuser, monkeypatch)
    api = kubeio.connect(Timeouts(2, 2), errors=m.api_error)
    assert kubeio.read_namespace(api, "gone") is None  # the typed errors still work as before
    kubeio.delete(api, "Namespace", "gone")
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}
    assert kubeio.create_namespace(api, namespace) is False
    with pytest.raises(kubeio.NotFoundError):
        kubeio.list_labelled(api, "Namespace", "a=b")
    assert value(m, "testenv_api_errors_total", reason="NotFound") == 3
    assert value(m, "testenv_api_errors_total", reason="AlreadyExists") == 1

    use_server(tmp_path, _closed_port(), monkeypatch)
    api = kubeio.connect(Timeouts(2, 2), errors=m.api_error)
    with pytest.raises(Exception, match=r"(?i)refused|connect"):
        kubeio.read_namespace(api, "x")
    assert value(m, "testenv_api_errors_total", reason="ConnectionFailed") == 1


def test_a_call_that_gets_no_answer_in_time_is_a_client_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = Metrics()
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        use_server(tmp_path, silent.getsockname()[1], monkeypatch)
        api = kubeio.connect(Timeouts(0.3, 0.3), errors=m.api_error)
        started = time.monotonic()
        with pytest.raises(Exception, match=r"(?i)timed out"):
            kubeio.read_namespace(api, "x")
        assert time.monotonic() - started < 5
    assert value(m, "testenv_api_errors_total", reason="ClientTimeout") == 1


def _closed_port() -> int:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Refuser)
    port = server.server_address[1]
    server.server_close()
    return port


# -- the endpoint and its setting ------------------------------------------------------------------


def test_the_endpoint_serves_the_page_at_its_path_only() -> None:
    m = Metrics()
    m.leader.set(1)
    endpoint = m.serve("http://127.0.0.1:0/metrics")
    assert endpoint is not None
    try:
        url = f"http://127.0.0.1:{endpoint.port}"
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            page = response.read().decode()
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
        assert "testenv_leader 1.0" in page
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/healthz", timeout=5)
        assert refused.value.code == 404
    finally:
        endpoint.close()
    assert m.serve("") is None


def test_two_endpoints_cannot_share_a_port() -> None:
    first = Metrics().serve("http://127.0.0.1:0/metrics")
    assert first is not None
    try:
        with pytest.raises(OSError, match=r"(?i)in use"):
            Metrics().serve(f"http://127.0.0.1:{first.port}/metrics")
    finally:
        first.close()


def test_the_metrics_setting_takes_an_http_url_or_nothing() -> None:
    assert Settings.from_env({}).reporting.metrics == "http://0.0.0.0:8081/metrics"
    assert Settings.from_env({"TESTENV_METRICS": ""}).reporting.metrics == ""
    assert Settings.from_env({"TESTENV_METRICS": "  "}).metrics == ""
    chosen = Settings.from_env({"TESTENV_METRICS": "http://[::]:9100/prometheus"})
    assert chosen.metrics == "http://[::]:9100/prometheus"
    for bad in ("0.0.0.0:8081", "https://0.0.0.0:8081/metrics", "http://:8081/metrics", "http://h:port/m"):
        with pytest.raises(SettingsError, match=r"TESTENV_METRICS=.*write http://HOST:PORT/PATH"):
            Settings.from_env({"TESTENV_METRICS": bad})
