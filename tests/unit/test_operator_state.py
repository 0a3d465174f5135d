"""The operator's shared state, without a cluster: typed API errors, Events said once per state,
when a spec counts as handled, and the rules of the leader-election Lease."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from testenv_operator import kubeio
from testenv_operator.election import Lease
from testenv_operator.events import EventPoster
from testenv_operator.handlers import spec_unhandled

Manifest = dict[str, Any]


class RecordingPoster(EventPoster):
    def __init__(self) -> None:
        super().__init__()
        self.posted: list[tuple[str, str, str]] = []

    def action(self, body: Mapping[str, Any], reason: str, message: str, warning: bool = False) -> None:
        self.posted.append((body["metadata"]["uid"], reason, message))


def _body(uid: str = "u1", generation: int = 1, observed: int | None = None) -> dict[str, Any]:
    status = {} if observed is None else {"observedGeneration": observed}
    return {"metadata": {"uid": uid, "generation": generation}, "status": status}


def _refusal(status: int, message: str = "nope") -> ApiException:
    exc = ApiException(status=status, reason="Reason")
    exc.body = json.dumps({"kind": "Status", "message": message})
    return exc


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (403, kubeio.ForbiddenError),
        (404, kubeio.NotFoundError),
        (409, kubeio.ConflictError),
        (410, kubeio.GoneError),
        (422, kubeio.InvalidError),
        (500, kubeio.ApiError),
    ],
)
def test_refusals_become_typed_errors_with_the_servers_message(status: int, kind: type) -> None:
    said = "namespace x is being terminated"
    error = kubeio.typed(_refusal(status, said))
    assert type(error) is kind
    assert (error.status, error.reason, error.message) == (status, "Reason", said)
    assert str(error) == f"{status} Reason: {said}"


def test_a_refusal_without_a_json_body_keeps_its_text() -> None:
    exc = ApiException(status=503, reason="Service Unavailable")
    exc.body = "upstream connect error"
    error = kubeio.typed(exc)
    assert (error.status, error.message) == (503, "upstream connect error")


def test_a_statement_is_posted_once_until_it_changes_or_is_cleared() -> None:
    events = RecordingPoster()
    body = _body()
    assert events.statement(body, "problem", "SpecInvalid", "spec.workers: too many")
    assert not events.statement(body, "problem", "SpecInvalid", "spec.workers: too many")
    assert events.statement(body, "problem", "SpecInvalid", "spec.services: empty")  # a new message
    events.clear("u1", "problem")
    assert events.statement(body, "problem", "SpecInvalid", "spec.services: empty")  # said anew
    assert len(events.posted) == 3


def test_statements_are_kept_apart_by_object_and_topic() -> None:
    events = RecordingPoster()
    for uid in ("u1", "u2"):
        for topic in ("conflict:a", "conflict:b"):
            assert events.statement(_body(uid), topic, "NamespaceConflict", "taken")
    assert events.topics("u1") == {"conflict:a", "conflict:b"}
    events.clear("u1")  # no topic named: nothing ends
    assert events.topics("u1") == {"conflict:a", "conflict:b"}
    events.clear("u1", "conflict:a")
    assert events.topics("u1") == {"conflict:b"}
    events.forget("u1")
    assert events.topics("u1") == set()
    assert events.topics("u2") == {"conflict:a", "conflict:b"}


def test_actions_are_posted_every_time() -> None:
    events = RecordingPoster()
    for _ in range(2):
        events.action(_body(), "Repaired", "re-applied missing objects of workers [0]")
    assert len(events.posted) == 2


@pytest.mark.parametrize(
    ("generation", "observed", "unhandled"),
    [(1, None, True), (1, 1, False), (2, 1, True), (3, 3, False)],
    ids=["new", "handled", "spec changed", "handled again"],
)
def test_a_spec_is_handled_once_a_status_describes_its_generation(
    generation: int, observed: int | None, unhandled: bool
) -> None:
    assert spec_unhandled(_body(generation=generation, observed=observed)) is unhandled


# -- the leader-election Lease, its pure rules ----------------------------------------------------

NOW = datetime.datetime(2026, 12, 5, 12, 0, 0, tzinfo=datetime.UTC)


def _lease(
    holder: str | None, renewed_ago: float, duration: int = 15, transitions: int = 0
) -> dict[str, Any]:
    renewed = NOW - datetime.timedelta(seconds=renewed_ago)
    return {
        "metadata": {"name": "op", "namespace": "sys", "resourceVersion": "7"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "acquireTime": "2026-12-05T11:00:00.000000Z",
            "leaseTransitions": transitions,
        },
    }


def _candidate(holder: str = "me") -> Lease:
    return Lease(None, "sys", "op", holder=holder)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("current", "blocked_by"),
    [
        (None, None),
        (_lease("other", renewed_ago=5), "other"),
        (_lease("other", renewed_ago=16), None),  # ran out: free to take
        (_lease("other", renewed_ago=20, duration=30), "other"),  # the holder's own duration counts
        (_lease("me", renewed_ago=5), None),  # ours: renew it
        (_lease(None, renewed_ago=0), None),  # given up
    ],
    ids=["none", "held", "run-out", "long-lease", "ours", "released"],
)
def test_a_candidate_waits_only_for_another_holders_live_lease(
    current: dict[str, Any] | None, blocked_by: str | None
) -> None:
    assert _candidate().held_by_another(current, NOW) == blocked_by


def test_taking_a_lease_over_counts_a_transition_and_renewing_does_not() -> None:
    taken = _candidate()._body(_lease("other", renewed_ago=30, transitions=2), NOW)["spec"]
    assert taken["holderIdentity"] == "me"
    assert taken["leaseTransitions"] == 3
    assert taken["acquireTime"] == taken["renewTime"] == "2026-12-05T12:00:00.000000Z"
    renewed = _candidate()._body(_lease("me", renewed_ago=2, transitions=3), NOW)
    assert renewed["spec"]["leaseTransitions"] == 3
    assert renewed["spec"]["acquireTime"] == "2026-12-05T11:00:00.000000Z"
    assert renewed["metadata"]["resourceVersion"] == "7"  # a write only if nobody wrote since
    first = _candidate()._body(None, NOW)
    assert first["spec"]["leaseTransitions"] == 0
    assert "resourceVersion" not in first["metadata"]  # a create


def test_a_holder_counts_as_lost_once_the_renew_deadline_passed_unrenewed() -> None:
    lease = _candidate()
    assert lease.lost(100.0)  # never held
    lease.last_renewed = 100.0
    assert not lease.lost(100.0 + lease.renew_deadline)
    assert lease.lost(100.0 + lease.renew_deadline + 0.1)
