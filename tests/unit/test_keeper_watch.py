"""A reuse keeper and a claiming run look at the kept environment through the API, not a file.

The API server here is a small HTTP server of the test's own that answers the TestEnvironment's
GET as the test says (the object, a 404, ...); "unreachable" is a port nothing listens on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from testenv_harness.frontends import keeper, reuse
from testenv_harness.ground.errors import TestEnvError
from testenv_harness.run import runstate
from testenv_harness.run.options import RunOptions, services_manifest
from testenv_harness.worker.fault_wire import address
from testenv_harness.worker.handoff import Handoff

UID = "0b5c9f5e-1111-2222-3333-444455556666"


class FakeApi:
    """Answers GET .../testenvironments/<name> with `status` and `body`; counts the reads."""

    def __init__(self) -> None:
        self.status = 200
        self.body: dict[str, Any] = environment()
        self.reads = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.reads += 1
                if api.status == 404:
                    payload = {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}
                else:
                    payload = api.body
                data = json.dumps(payload).encode()
                self.send_response(api.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def environment(phase: str = "Ready", workers: int = 2, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "run-abc123", "namespace": "default", "uid": UID, **meta},
        "status": {
            "phase": phase,
            "workers": [
                {"index": i, "namespace": f"te-w{i}", "phase": phase, "services": []} for i in range(workers)
            ],
        },
    }


def _kubeconfig(path: Path, port: int) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def _handoff(kubeconfig: Path) -> Handoff:
    return Handoff(
        kubeconfig=str(kubeconfig),
        namespace="default",
        name="run-abc123",
        run_id="abc123",
        run_dir="/nonexistent",
        provider="local",
        timeout=60,
    )


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(reuse, "CHECK_SECONDS", 0.01)
    monkeypatch.setattr(reuse, "GONE_SECONDS", 0.3, raising=False)
    monkeypatch.setattr(reuse, "UNREACHABLE_SECONDS", 0.6, raising=False)


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    yield fake
    fake.server.shutdown()


@pytest.fixture
def handoff(api: FakeApi, tmp_path: Path) -> Handoff:
    return _handoff(_kubeconfig(tmp_path / "kubeconfig", api.port))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _until(check: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (result := check()) is not None:
            return result
        time.sleep(0.05)
    raise AssertionError("nothing within the time")


# -- what one read says -------------------------------------------------------------------------


def test_a_deleted_environment_reads_as_gone_naming_it(api: FakeApi, handoff: Handoff) -> None:
    api.status = 404
    with pytest.raises(TestEnvError, match=r"environment default/run-abc123 is gone from the cluster \(404"):
        reuse.read_environment(handoff, UID)


@pytest.mark.parametrize(
    ("meta", "says"),
    [
        ({"uid": "another"}, "is another object now"),
        ({"deletionTimestamp": "2030-01-01T00:00:00Z"}, "being deleted"),
    ],
)
def test_another_object_of_its_name_or_one_being_deleted_is_gone(
    api: FakeApi, handoff: Handoff, meta: dict[str, str], says: str
) -> None:
    api.body = environment(**meta)
    with pytest.raises(reuse.EnvironmentGoneError, match=says) as gone:
        reuse.read_environment(handoff, UID)
    assert not gone.value.unreachable


def test_an_unreachable_cluster_is_said_in_one_line(tmp_path: Path) -> None:
    handoff = _handoff(_kubeconfig(tmp_path / "kubeconfig", _closed_port()))
    with pytest.raises(reuse.EnvironmentGoneError, match="cannot reach the cluster of environment") as gone:
        reuse.read_environment(handoff, UID, timeout=2)
    assert gone.value.unreachable
    assert "\n" not in str(gone.value)


def test_a_missing_kubeconfig_is_an_unreachable_cluster(tmp_path: Path) -> None:
    """`make cluster-down` deletes the local cluster's kubeconfig with it."""
    with pytest.raises(reuse.EnvironmentGoneError, match="cannot reach the cluster") as gone:
        reuse.read_environment(_handoff(tmp_path / "deleted"), UID)
    assert gone.value.unreachable


# -- the keeper's watch -------------------------------------------------------------------------


def test_the_watch_says_gone_only_once_the_environment_stayed_gone(api: FakeApi, handoff: Handoff) -> None:
    watch = reuse.EnvironmentWatch(handoff, UID, every=0)
    assert watch.gone() is None
    api.status = 404
    assert watch.gone() is None, "one read is not enough"
    assert "gone from the cluster" in _until(watch.gone)


def test_an_environment_back_within_the_grace_keeps_the_keeper(api: FakeApi, handoff: Handoff) -> None:
    watch = reuse.EnvironmentWatch(handoff, UID, every=0)
    api.status = 404
    assert watch.gone() is None
    api.status = 200
    assert watch.gone() is None
    time.sleep(reuse.GONE_SECONDS + 0.1)
    assert watch.gone() is None, "the grace counts from the first failed read after the last good one"


def test_an_unreachable_cluster_ends_the_keeper_after_a_longer_grace(tmp_path: Path) -> None:
    watch = reuse.EnvironmentWatch(
        _handoff(_kubeconfig(tmp_path / "kubeconfig", _closed_port())), UID, every=0
    )
    started = time.monotonic()
    assert "cannot reach the cluster" in _until(watch.gone)
    assert time.monotonic() - started >= reuse.UNREACHABLE_SECONDS


def test_the_keeper_loop_ends_once_its_environment_is_gone(api: FakeApi, handoff: Handoff) -> None:
    api.status = 404
    said: list[str] = []
    started = time.monotonic()
    own = reuse.keep_while_claimed(
        "reuse-x", 3600, said.append, reuse.EnvironmentWatch(handoff, UID, every=0)
    )
    assert time.monotonic() - started < 10
    assert own is not None, "nobody held the claim: the keeper holds it while it tears down"
    own.release()
    assert len(said) == 1
    assert "gone from the cluster" in said[0]
    assert "keeper 'reuse-x' tears down" in said[0]


def test_a_claimed_keeper_ends_too_once_its_environment_is_gone(api: FakeApi, handoff: Handoff) -> None:
    held = reuse.Claim.take("reuse-x")  # a run's claim
    assert held is not None
    api.status = 404
    try:
        own = reuse.keep_while_claimed(
            "reuse-x", 3600, lambda line: None, reuse.EnvironmentWatch(handoff, UID, every=0)
        )
        assert own is None
    finally:
        held.release()


# -- a claiming run -----------------------------------------------------------------------------


class _ReplacedError(Exception):
    """What the patched `_start_keeper` raises: the run went for a fresh keeper."""


@pytest.fixture(params=[True, False], ids=["keeper-checks", "run-checks"])
def forwarded(request: pytest.FixtureRequest) -> bool:
    """A keeper of this version forwards its workers and checks its environment for the claiming
    run; one that does not forward is checked by the run itself."""
    value: bool = request.param
    return value


@pytest.fixture
def run_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The threads that read the environment: the claiming run's (the main thread) or the keeper's."""
    threads: list[str] = []
    read = reuse.read_environment

    def counted(handoff: Handoff, uid: str, timeout: float = reuse.READ_TIMEOUT) -> dict[str, Any]:
        threads.append("run" if threading.current_thread() is threading.main_thread() else "keeper")
        return read(handoff, uid, timeout)

    monkeypatch.setattr(reuse, "read_environment", counted)
    return threads


@contextlib.contextmanager
def _claiming_run(
    monkeypatch: pytest.MonkeyPatch,
    handoff: Handoff,
    forwarded: bool = False,
    older: bool = False,
    silent: bool = False,
    dead: bool = False,
) -> Iterator[tuple[reuse.ReuseSession, list[str], list[str]]]:
    """A run claiming keeper "reuse-x" of 2 workers; with `forwarded`, the keeper's socket serves
    it, checking the environment for the run (unless `older`: a keeper of an older version; or
    `silent`: one that is stopped, whose socket takes connections that nobody reads). `dead`: the
    state names a process that is gone (a keeper killed with -9 leaves its state behind)."""
    state = runstate.RunState(
        name="reuse-x",
        pid=os.getpid(),
        command="up",
        workers=2,
        cluster="local testenv",
        operator="subprocess",
        forwarded=forwarded,
        phase=runstate.READY,
        uid=UID,
        handoff=dataclasses.asdict(handoff),
        started=1 if dead else 0,  # another start time: not this process, which the PID names
    )
    runstate.save(state)
    stopped: list[str] = []
    monkeypatch.setattr(reuse, "_stop", lambda state, timeout=300: stopped.append(state.name))

    def fresh(self: reuse.ReuseSession) -> runstate.RunState:
        raise _ReplacedError

    monkeypatch.setattr(reuse.ReuseSession, "_start_keeper", fresh)
    service: keeper.KeeperService | None = None
    stopped_keeper = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if silent:
        with address(keeper.socket_path("reuse-x")) as where:  # a long path, as the keeper binds it
            stopped_keeper.bind(where)
        stopped_keeper.listen(8)
    elif forwarded:
        service = keeper.KeeperService(
            "reuse-x", [], lambda line: None, None if older else reuse.claim_check(handoff, UID)
        )
    claim = reuse.Claim.take("reuse-x")
    assert claim is not None
    said: list[str] = []
    options = RunOptions(workers=2, manifest=services_manifest(["redis"]))
    session = reuse.ReuseSession(options, claim, 900, said.append)
    try:
        yield session, said, stopped
    finally:
        session.stop()
        session.remove_run_dir()
        if service is not None:
            service.close()
        stopped_keeper.close()


def test_a_run_claims_a_kept_environment_that_is_there_and_ready(
    api: FakeApi, handoff: Handoff, monkeypatch: pytest.MonkeyPatch, forwarded: bool, run_reads: list[str]
) -> None:
    with _claiming_run(monkeypatch, handoff, forwarded) as (
        session,
        said,
        stopped,
    ):
        handed = session.start()
        assert session.reused
        assert api.reads >= 1, "the claim asked the API server"
        assert stopped == []
        assert "reusing environment run-abc123" in said[-1]
        if forwarded:
            assert run_reads == ["keeper"], "the keeper read it for the run"
            assert handed.status is not None
            assert [w["namespace"] for w in handed.status["workers"]] == ["te-w0", "te-w1"]
        else:
            assert run_reads == ["run"]


@pytest.mark.parametrize(
    ("status", "body", "says"),
    [
        (404, {}, "environment default/run-abc123 is gone from the cluster (404"),
        (200, environment(phase="Failed"), "environment default/run-abc123 is Failed"),
        (200, environment(uid="another"), "is another object now"),
        (200, environment(workers=1), "environment default/run-abc123 is Ready, worker(s) 1 not Ready"),
    ],
    ids=["deleted", "failed", "made-again", "too-few-ready"],
)
def test_a_run_that_finds_the_kept_environment_gone_sets_up_afresh_in_one_line(
    api: FakeApi,
    handoff: Handoff,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    body: dict[str, Any],
    says: str,
    forwarded: bool,
) -> None:
    api.status, api.body = status, body or api.body
    monkeypatch.setattr(reuse, "CLAIM_READY_SECONDS", 0.5)
    with _claiming_run(monkeypatch, handoff, forwarded) as (
        session,
        said,
        stopped,
    ):
        with pytest.raises(_ReplacedError):
            session.start()
        assert stopped == ["reuse-x"], "the keeper of a gone environment is ended"
        (line,) = [line for line in said if "keeper 'reuse-x'" in line]
        assert says in line
        assert line.endswith("ending it and setting up a fresh environment")


def test_a_run_waits_a_little_for_a_kept_environment_that_is_not_ready_yet(
    api: FakeApi, handoff: Handoff, monkeypatch: pytest.MonkeyPatch, forwarded: bool
) -> None:
    """A pod of it restarting (the last run's reset) is no reason for a full set-up."""
    api.body = environment(phase="Degraded")
    threading.Timer(1.0, lambda: setattr(api, "body", environment())).start()
    with _claiming_run(monkeypatch, handoff, forwarded) as (session, _, stopped):
        session.start()
        assert session.reused
        assert stopped == []


def test_a_keeper_of_an_older_version_which_does_not_check_is_replaced(
    api: FakeApi, handoff: Handoff, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _claiming_run(monkeypatch, handoff, True, older=True) as (
        session,
        said,
        stopped,
    ):
        with pytest.raises(_ReplacedError):
            session.start()
        assert stopped == ["reuse-x"]
        assert "of an older version" in said[-1]


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (404, "environment default/run-abc123 is gone from the cluster (404"),
        (200, "keeper 'reuse-x' did not take the request up within"),
    ],
    ids=["environment-gone", "environment-there"],
)
def test_a_stopped_keeper_costs_a_run_seconds_and_the_run_says_why_it_replaces_it(
    api: FakeApi, handoff: Handoff, monkeypatch: pytest.MonkeyPatch, status: int, says: str
) -> None:
    """A keeper that cannot answer (SIGSTOP, hung) is no reason to wait minutes: the run looks at
    the API server itself, says what it shows, and sets up afresh."""
    monkeypatch.setattr(keeper, "ACK_SECONDS", 0.5)
    api.status = status
    with _claiming_run(monkeypatch, handoff, True, silent=True) as (session, said, stopped):
        began = time.monotonic()
        with pytest.raises(_ReplacedError):
            session.start()
        assert time.monotonic() - began < 5
        assert stopped == ["reuse-x"]
        (line,) = [line for line in said if "keeper 'reuse-x' (process" in line]
        assert says in line
        assert line.endswith("ending it and setting up a fresh environment")


def test_a_run_claims_ahead_while_its_workers_start_and_start_uses_that(
    api: FakeApi, handoff: Handoff, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plugin calls `start_ahead` at the session's start: the exchange with the keeper is done
    by the time the first worker has collected, and `start` does not ask again."""
    with _claiming_run(monkeypatch, handoff, True) as (session, said, stopped):
        session.start_ahead()
        assert api.reads == 1, "the keeper checked the environment ahead"
        assert said == [], "nothing said before tests are known to run"
        handed = session.start()
        assert api.reads == 1
        assert session.reused
        assert handed.status is not None
        assert stopped == []


def test_a_run_ahead_takes_nothing_down_where_the_keeper_cannot_serve(
    api: FakeApi, handoff: Handoff, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ahead, a gone environment is only noted: its keeper is ended by `start`, once tests run."""
    api.status = 404
    with _claiming_run(monkeypatch, handoff, True) as (session, said, stopped):
        session.start_ahead()
        assert stopped == []
        with pytest.raises(_ReplacedError):
            session.start()
        assert stopped == ["reuse-x"]
        assert "is gone from the cluster (404" in said[-1]


def test_a_run_that_finds_only_a_dead_keepers_state_starts_a_keeper(
    api: FakeApi, handoff: Handoff, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keeper killed with -9 leaves its state file: the run must not hand that out."""
    with _claiming_run(monkeypatch, handoff, True, dead=True) as (session, _, stopped):
        with pytest.raises(_ReplacedError):
            session.start()
        assert not session.reused
        assert stopped == []
