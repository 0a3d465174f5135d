"""The operator's shared state, without a cluster: typed API errors, Events said once per state,
and when a spec counts as handled. (The leader-election Lease: test_election.)"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from testenv_operator import kubeio
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
