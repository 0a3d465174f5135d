"""The daemons' one loop, without a cluster: when it passes, how it backs off, when it ends; and
what one pass of an environment is given."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from testenv_api import FINALIZER
from testenv_operator import converger
from testenv_operator.converger import MAX_BACKOFF_SECONDS, Result, Resync, backoff, keep
from testenv_operator.kubeio import Mandate
from testenv_operator.readiness import Observed
from testenv_operator.reconciler import Depth, PassInput


class Stopped:
    """kopf's DaemonStopped as the loop uses it: falsy until set, and awaitable."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()

    async def wait(self) -> None:
        await self.event.wait()


def _body(finalized: bool = True) -> dict[str, Any]:
    return {"metadata": {"uid": "u1", "finalizers": [FINALIZER] if finalized else []}}


def _run(
    body: dict[str, Any], results: list[Result | Exception], monkeypatch: pytest.MonkeyPatch
) -> tuple[list[float | None], int, SimpleNamespace]:
    """Run the loop over passes that give `results` in turn; the sleeps it asked for, the passes
    it made. After the last result the daemon is stopped."""
    runtime = SimpleNamespace(wakers={}, finishing=False, mandate=Mandate())
    stopped = Stopped()
    sleeps: list[float | None] = []
    passes = 0

    async def one_pass(snapshot: Mapping[str, Any]) -> Result:
        nonlocal passes
        assert snapshot == body
        assert snapshot is not body, "a snapshot: kopf changes the body it holds"
        passes += 1
        result = results[passes - 1]
        if isinstance(result, Exception):
            raise result
        return result

    async def sleep(waker: asyncio.Event, _: object, timeout: float | None) -> None:
        assert runtime.wakers["u1"] is waker
        sleeps.append(timeout)
        if len(sleeps) >= len(results):
            stopped.event.set()

    monkeypatch.setattr(converger, "_sleep", sleep)
    asyncio.run(keep(runtime, body, stopped, one_pass, "ns/name"))  # type: ignore[arg-type]
    return sleeps, passes, runtime


def test_a_pass_says_when_the_next_one_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps, passes, runtime = _run(_body(), [Result(7.0), Result()], monkeypatch)
    assert (sleeps, passes) == ([7.0, None], 2)  # None: until an event wakes it
    assert runtime.wakers == {}, "the daemon's waker goes with it"


def test_a_pass_that_raised_is_tried_again_later_each_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    results: list[Result | Exception] = [
        RuntimeError("refused"),
        RuntimeError("away"),
        Result(3.0),
        OSError("x"),
    ]
    sleeps, _, _ = _run(_body(), results, monkeypatch)
    assert sleeps == [2.0, 4.0, 3.0, 2.0], "a pass that succeeded starts the backoff over"
    assert "a pass of ns/name failed: refused; next try in 2s" in caplog.text
    assert [backoff(n) for n in (1, 4, 5, 9)] == [2.0, 16.0, MAX_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS]


def test_a_pass_that_is_done_ends_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps, passes, _ = _run(_body(), [Result(done=True), Result()], monkeypatch)
    assert (sleeps, passes) == ([], 1)


def test_nothing_passes_before_the_finalizer_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps, passes, _ = _run(_body(finalized=False), [Result(1.0)], monkeypatch)
    assert (sleeps, passes) == ([None], 0)


def test_a_finishing_process_passes_no_more(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = SimpleNamespace(wakers={}, finishing=True, mandate=Mandate())

    async def one_pass(_: Mapping[str, Any]) -> Result:
        raise AssertionError("no pass while finishing")

    asyncio.run(keep(runtime, _body(), Stopped(), one_pass, "ns/name"))  # type: ignore[arg-type]
    assert runtime.wakers == {}


def test_no_pass_starts_once_the_process_lost_the_lease() -> None:
    """The pass that finds the mandate revoked is the last: the loop waits for kopf to stop it."""
    runtime = SimpleNamespace(wakers={}, finishing=False, mandate=Mandate())
    stopped = Stopped()
    passes = 0

    async def one_pass(_: Mapping[str, Any]) -> Result:
        nonlocal passes
        passes += 1
        runtime.mandate.revoke("not renewed for 10.0s")
        return Result(0.0)  # would pass again at once

    async def main() -> None:
        daemon = asyncio.create_task(keep(runtime, _body(), stopped, one_pass, "ns/name"))  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        assert not daemon.done(), "it waits for kopf's stop, as a daemon must"
        stopped.event.set()
        await asyncio.wait_for(daemon, 5)

    asyncio.run(main())
    assert passes == 1


def test_an_event_wakes_the_sleeping_loop() -> None:
    runtime = SimpleNamespace(wakers={}, finishing=False, mandate=Mandate())
    stopped = Stopped()
    passes = 0

    async def one_pass(_: Mapping[str, Any]) -> Result:
        nonlocal passes
        passes += 1
        if passes == 2:
            stopped.event.set()
        return Result()  # sleep until woken

    async def main() -> None:
        daemon = asyncio.create_task(keep(runtime, _body(), stopped, one_pass, "ns/name"))  # type: ignore[arg-type]
        while passes < 1:
            await asyncio.sleep(0)
        runtime.wakers["u1"].set()
        await asyncio.wait_for(daemon, 5)

    asyncio.run(main())
    assert passes == 2


def test_a_resync_is_due_first_and_then_every_period() -> None:
    resync = Resync(3600)
    assert resync.due()
    resync.done()
    assert not resync.due()
    assert Resync(0).due()


def test_a_report_pass_and_only_it_reads_the_watches() -> None:
    body = {"metadata": {"namespace": "team", "name": "env", "uid": "u1"}, "spec": {"services": []}}
    watched = Observed({}, frozenset(), frozenset())
    report = PassInput(body, Depth.REPORT, watched=watched)
    assert (report.acting, report.every_kind) == (False, False)
    assert (report.owner.namespace, report.owner.uid) == ("team", "u1")
    assert [PassInput(body, depth).acting for depth in (Depth.APPLY, Depth.RESYNC, Depth.REPAIR)] == [
        True
    ] * 3
    assert [PassInput(body, d).every_kind for d in (Depth.APPLY, Depth.RESYNC, Depth.REPAIR)] == [
        True,
        True,
        False,
    ]
    with pytest.raises(ValueError, match="REPORT"):
        PassInput(body, Depth.REPORT)
    with pytest.raises(ValueError, match="REPORT"):
        PassInput(body, Depth.REPAIR, watched=watched)
