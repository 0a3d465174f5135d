"""Leader election without a cluster: a fake clock and an in-memory Lease (with the API server's
resourceVersion rule) for the timers, and a loopback socket that never answers for the call bounds.

What is checked: a candidate's wait is measured on its own clock from when it saw the record
change, never from the holder's renewTime; a holder's deadline counts from the start of its last
successful renewal; the watchdog steps down on time while a renewal still hangs; every call has
timeouts; and a revoked mandate stops writes before they leave.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testenv_operator import kubeio
from testenv_operator.election import Lease, Terms, keep
from testenv_operator.kubeio import Mandate, NotActingError, Timeouts
from tests.unit.plain_http_api import use_server

Obj = dict[str, Any]


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Store:
    """One Lease as the API server keeps it: a write must carry the resourceVersion it read."""

    def __init__(self, clock: Clock | None = None, read_takes: float = 0.0) -> None:
        self.lease: Obj | None = None
        self.version = 0
        self.clock, self.read_takes = clock, read_takes
        self.hang = threading.Event()  # cleared: writes hang until it is set
        self.hang.set()
        self.writes = 0
        self.hanging = 0  # writes waiting for `hang` right now

    def put(self, holder: str | None, renewed: str, duration: int = 15, transitions: int = 0) -> None:
        """Someone else writes the Lease (renewTime as they wrote it: any clock)."""
        self.version += 1
        self.lease = {
            "metadata": {"name": "op", "namespace": "sys", "resourceVersion": str(self.version)},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": duration,
                "renewTime": renewed,
                "acquireTime": "2026-12-05T11:00:00.000000Z",
                "leaseTransitions": transitions,
            },
        }

    def read(self, _api: object, _namespace: str, _name: str) -> Obj | None:
        if self.clock:
            self.clock.advance(self.read_takes)  # a slow answer
        return copy.deepcopy(self.lease)

    def write(self, _api: object, lease: Obj) -> None:
        self.hanging += 1
        self.hang.wait()
        self.hanging -= 1
        given = lease["metadata"].get("resourceVersion")
        if (self.lease is None) != (given is None) or (
            self.lease and given != self.lease["metadata"]["resourceVersion"]
        ):
            raise kubeio.ConflictError(409, "Conflict", "the object has been modified")
        self.version += 1
        self.writes += 1
        self.lease = copy.deepcopy(lease)
        self.lease["metadata"]["resourceVersion"] = str(self.version)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> Store:
    found = Store(clock)
    monkeypatch.setattr(kubeio, "read_lease", found.read)
    monkeypatch.setattr(kubeio, "write_lease", found.write)
    return found


def _lease(clock: Clock | None = None, holder: str = "me", terms: Terms | None = None) -> Lease:
    return Lease(
        None,  # type: ignore[arg-type]  # the store answers instead of an API server
        "sys",
        "op",
        holder=holder,
        terms=terms or Terms.of(15),
        clock=clock or time.monotonic,
    )


# -- a candidate: the holder's renewTime decides nothing ------------------------------------------


@pytest.mark.parametrize(
    "renewed",
    ["2020-01-01T00:00:00.000000Z", "2099-01-01T00:00:00.000000Z"],
    ids=["holder-clock-behind", "holder-clock-ahead"],
)
def test_a_candidate_takes_a_lease_once_it_saw_it_unchanged_for_its_duration(
    clock: Clock, store: Store, renewed: str
) -> None:
    """A renewTime years old (or ahead) is what a skewed clock writes: only our own clock counts,
    from the moment we first saw the record."""
    store.put("other", renewed)
    candidate = _lease(clock)
    assert not candidate.try_hold()
    clock.advance(14.9)
    assert not candidate.try_hold()
    assert candidate.held_by_another() == "other"
    clock.advance(0.1)
    assert candidate.try_hold()
    assert store.lease is not None
    assert store.lease["spec"]["holderIdentity"] == "me"
    assert store.lease["spec"]["leaseTransitions"] == 1


def test_a_change_of_the_record_starts_the_candidates_wait_over(clock: Clock, store: Store) -> None:
    store.put("other", "2026-12-05T12:00:00.000000Z")
    candidate = _lease(clock)
    assert not candidate.try_hold()
    clock.advance(10)
    store.put("other", "2026-12-05T12:00:10.000000Z")  # renewed: alive
    assert not candidate.try_hold()
    clock.advance(14.9)
    assert not candidate.try_hold(), "15 s since the change, not since the first sight"
    clock.advance(0.1)
    assert candidate.try_hold()


def test_the_holders_own_duration_counts(clock: Clock, store: Store) -> None:
    store.put("other", "2026-12-05T12:00:00.000000Z", duration=30)
    candidate = _lease(clock)
    assert not candidate.try_hold()
    clock.advance(20)
    assert not candidate.try_hold()
    clock.advance(10)
    assert candidate.try_hold()


@pytest.mark.parametrize("holder", [None, ""], ids=["null", "empty"])
def test_a_lease_given_up_is_taken_at_once(clock: Clock, store: Store, holder: str | None) -> None:
    store.put(holder, "2026-12-05T12:00:00.000000Z", duration=1, transitions=4)
    candidate = _lease(clock)
    assert candidate.try_hold()
    assert store.lease is not None
    assert store.lease["spec"]["leaseTransitions"] == 4, "nobody held it: no transition"


def test_of_two_candidates_one_wins(clock: Clock, store: Store) -> None:
    first, second = _lease(clock, "first"), _lease(clock, "second")
    assert first.try_hold()
    assert not second.try_hold()
    assert second.seen_holder == "first"


def test_a_write_is_conditional_on_the_record_read(
    clock: Clock, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between a candidate's read and its write, the holder renewed: the write loses (409)."""
    store.put("other", "2026-12-05T12:00:00.000000Z")
    candidate = _lease(clock)
    candidate.try_hold()
    clock.advance(15)

    def read_then_renewed(*args: Any) -> Obj | None:
        found = Store.read(store, *args)
        store.put("other", "2026-12-05T12:00:15.000000Z")
        return found

    monkeypatch.setattr(kubeio, "read_lease", read_then_renewed)
    assert not candidate.try_hold()
    assert store.lease is not None
    assert store.lease["spec"]["holderIdentity"] == "other"


def test_taking_a_lease_over_counts_a_transition_and_renewing_does_not() -> None:
    now = datetime.datetime(2026, 12, 5, 12, 0, 0, tzinfo=datetime.UTC)
    held = Store()
    held.put("other", "2026-12-05T11:59:30.000000Z", transitions=2)
    taken = _lease()._body(held.lease, now)["spec"]
    assert taken["holderIdentity"] == "me"
    assert taken["leaseTransitions"] == 3
    assert taken["acquireTime"] == taken["renewTime"] == "2026-12-05T12:00:00.000000Z"
    held.put("me", "2026-12-05T11:59:58.000000Z", transitions=3)
    renewed = _lease()._body(held.lease, now)
    assert renewed["spec"]["leaseTransitions"] == 3
    assert renewed["spec"]["acquireTime"] == "2026-12-05T11:00:00.000000Z"
    assert renewed["metadata"]["resourceVersion"] == "2"  # a write only if nobody wrote since
    first = _lease()._body(None, now)
    assert first["spec"]["leaseTransitions"] == 0
    assert "resourceVersion" not in first["metadata"]  # a create


# -- a holder: its deadline, on its own clock ------------------------------------------------------


def test_a_holders_deadline_counts_from_the_start_of_its_last_successful_renewal(
    clock: Clock, store: Store
) -> None:
    """A renewal that took 2 s (a slow read) counts from before it: the record it wrote may have
    been seen by a candidate as early as that."""
    store.read_takes = 2.0
    holder = _lease(clock)
    assert holder.time_left() == 0.0, "never held: nothing left"
    started = clock.now
    assert holder.try_hold()
    assert holder.last_renewed == started
    assert holder.time_left() == pytest.approx(10.0 - 2.0)
    clock.advance(8.0)
    assert holder.time_left() == pytest.approx(0.0)
    assert holder.exit_in() == pytest.approx(12.5 - 10.0)


def test_a_failed_renewal_moves_no_deadline(clock: Clock, store: Store) -> None:
    holder = _lease(clock)
    assert holder.try_hold()
    clock.advance(5)
    store.put("thief", "2026-12-05T12:00:00.000000Z")  # taken over meanwhile
    assert not holder.try_hold()
    assert holder.time_left() == pytest.approx(5.0)
    assert holder.seen_holder == "thief"


def test_a_release_waits_for_the_renewal_in_flight_and_no_renewal_follows(store: Store) -> None:
    """A clean stop gives the Lease up even while a renewal is under way: were the renewal to land
    after the release, the Lease would name a process that is gone, and a successor would wait."""
    holder = _lease()
    assert holder.try_hold()
    store.hang.clear()
    renewing = threading.Thread(target=holder.try_hold)
    renewing.start()
    wait = time.monotonic() + 5
    while store.hanging == 0 and time.monotonic() < wait:
        time.sleep(0.01)
    releasing = threading.Thread(target=holder.release)
    releasing.start()
    time.sleep(0.2)
    assert releasing.is_alive(), "the release waits for the renewal in flight"
    store.hang.set()
    renewing.join(5)
    releasing.join(5)
    assert store.lease is not None
    assert store.lease["spec"]["holderIdentity"] is None
    assert not holder.try_hold(), "given up for good"
    assert store.lease["spec"]["holderIdentity"] is None


@pytest.mark.parametrize("seconds", [3, 4, 6, 15, 60, 300])
def test_the_terms_keep_their_order_for_every_lease_length(seconds: int) -> None:
    terms = Terms.of(seconds)
    assert terms.retry < terms.renew_deadline < terms.exit_deadline < terms.duration
    # A Lease call stuck until its timeout ends within half the deadline: time for another try.
    assert terms.lease_calls.read < terms.renew_deadline / 2
    assert terms.calls.read < terms.duration
    assert terms.calls.connect < terms.duration


def test_the_default_terms_are_client_gos() -> None:
    terms = Terms.of(15)
    assert (terms.duration, terms.renew_deadline, terms.retry) == (15, 10.0, 2.0)
    assert terms.exit_deadline == 12.5
    assert terms.calls == Timeouts(5.0, 7.5)


# -- the watchdog: a hung renewal cannot hold the step-down up ------------------------------------

FAST = Terms(duration=3, renew_deadline=0.5, retry=0.05)


def test_the_holder_steps_down_on_time_while_its_renewal_still_hangs(store: Store) -> None:
    holder = _lease(terms=FAST)
    assert holder.try_hold()
    store.hang.clear()  # every write from now on hangs (a dead but open connection)

    async def main() -> tuple[str, float, int, int]:
        try:
            why = await asyncio.wait_for(keep(holder), 5)
            assert holder.last_renewed is not None
            return why, time.monotonic() - holder.last_renewed, store.hanging, store.writes
        finally:
            store.hang.set()  # let the stuck thread end, or asyncio.run would wait for it

    why, after, hanging, writes = asyncio.run(main())
    assert why == "not renewed for 0.5s"
    assert hanging == 1, "a renewal was still stuck when the holder stepped down"
    assert writes == 1, "only the first write went through"
    assert FAST.renew_deadline <= after < FAST.renew_deadline + 0.4, f"stepped down {after:.2f}s after"


def test_the_holder_steps_down_at_once_when_another_holds_the_lease(store: Store) -> None:
    holder = _lease(terms=Terms(duration=3, renew_deadline=2.0, retry=0.05))
    assert holder.try_hold()
    store.put("thief", "2026-12-05T12:00:00.000000Z")
    started = time.monotonic()
    why = asyncio.run(asyncio.wait_for(keep(holder), 5))
    assert why == "the Lease is held by thief now"
    assert time.monotonic() - started < 1.0, "well before its own deadline"


def test_a_renewing_holder_keeps_the_lease(store: Store) -> None:
    holder = _lease(terms=FAST)
    assert holder.try_hold()

    async def main() -> bool:
        keeper = asyncio.ensure_future(keep(holder))
        await asyncio.sleep(3 * FAST.renew_deadline)
        held = not keeper.done()
        keeper.cancel()
        return held

    assert asyncio.run(main())
    assert store.writes > 5


# -- every call's bounds, and the mandate ---------------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and reads requests, but never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    listener.close()


def test_a_call_to_a_server_that_never_answers_ends_at_its_read_timeout(
    silent_server: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_server(tmp_path, silent_server, monkeypatch)
    api = kubeio.connect(Timeouts(0.5, 0.5))
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            kubeio.read_namespace(api, "anything")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    started = time.monotonic()
    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(10)
    took = time.monotonic() - started
    assert not caller.is_alive(), "the call still waits after 10 s"
    assert outcome
    assert outcome[0] is not None
    assert "timed out" in str(outcome[0]).lower()
    assert took < 2.0, f"one read timeout (0.5 s), not retried: took {took:.1f}s"


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str]

    def answer(self) -> None:
        self.seen.append(self.command)
        body = b'{"kind": "Status", "code": 404, "message": "not found"}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.answer()

    def do_PATCH(self) -> None:
        self.answer()

    def do_DELETE(self) -> None:
        self.answer()

    def log_message(self, *_: Any) -> None:
        pass


def test_a_revoked_mandate_stops_writes_before_they_leave_and_lets_reads_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        use_server(tmp_path, server.server_address[1], monkeypatch)
        mandate = Mandate()
        api = kubeio.connect(Timeouts(2, 2), mandate=mandate)
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}
        with pytest.raises(kubeio.NotFoundError):
            kubeio.apply(api, namespace)  # held: the write goes out (and is refused here)
        assert seen == ["PATCH"]
        mandate.revoke("not renewed for 10.0s")
        with pytest.raises(NotActingError, match=r"stepped down \(not renewed for 10.0s\)"):
            kubeio.apply(api, namespace)
        with pytest.raises(NotActingError):
            kubeio.delete(api, "Namespace", "x")
        with pytest.raises(NotActingError):
            kubeio.patch_environment_status(api, "team", "env", {"phase": "Ready"})
        assert kubeio.read_namespace(api, "x") is None  # reads still go out
        assert seen == ["PATCH", "GET"], "no write left after the revocation"
    finally:
        server.shutdown()
        server.server_close()


def test_a_revocation_waits_for_the_writes_already_under_way_and_no_later_write_starts() -> None:
    mandate = Mandate()
    inside, release = threading.Event(), threading.Event()

    def write() -> None:
        with mandate.writing():
            inside.set()
            release.wait(5)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    assert inside.wait(5)
    mandate.revoke("not renewed for 10.0s")
    with pytest.raises(NotActingError), mandate.writing():
        pass
    assert mandate.settle(0.05) == 1, "the write that passed the check before is still under way"
    threading.Timer(0.1, release.set).start()
    assert mandate.settle(5) == 0
    writer.join(5)
    assert not writer.is_alive()
