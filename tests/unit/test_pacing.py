"""How long an environment's daemon waits between passes, and where kopf keeps the last spec."""

from __future__ import annotations

import json
from typing import Any

import kopf
import pytest

from testenv_api import GROUP, ConditionType, Phase
from testenv_operator.diffbase import DigestDiffBaseStorage, digest
from testenv_operator.pacing import (
    PROVISIONING_SECONDS,
    PUSHED_PROVISIONING_SECONDS,
    REFUSED_SECONDS,
    ready_interval,
    seconds_to_next_pass,
)

RESYNC = 10.0
FAR = 3600.0


def _status(phase: Phase, spec_valid: bool = True, reason: str = "") -> dict[str, Any]:
    return {
        "phase": phase.value,
        "readyWorkers": 0,
        "conditions": [
            {"type": ConditionType.SPEC_VALID.value, "status": str(spec_valid), "reason": "x"},
            {"type": ConditionType.READY.value, "status": "False", "reason": reason},
        ],
    }


def test_a_refused_spec_waits_for_an_event_not_a_timer() -> None:
    assert seconds_to_next_pass(_status(Phase.FAILED, spec_valid=False), RESYNC, FAR) == REFUSED_SECONDS


def test_ready_and_outside_waits_use_the_resync_interval() -> None:
    assert seconds_to_next_pass(_status(Phase.READY), RESYNC, FAR) == RESYNC
    assert seconds_to_next_pass(_status(Phase.FAILED), RESYNC, FAR) == RESYNC  # e.g. a foreign namespace
    for reason in ("SecretMissing", "ApplyRefused"):
        assert seconds_to_next_pass(_status(Phase.PENDING, reason=reason), RESYNC, FAR) == RESYNC


def test_provisioning_polls_fast_unless_the_watches_push_readiness() -> None:
    for phase in (Phase.PENDING, Phase.PROVISIONING, Phase.DEGRADED):
        assert seconds_to_next_pass(_status(phase), RESYNC, FAR) == PROVISIONING_SECONDS
        assert seconds_to_next_pass(_status(phase), RESYNC, FAR, pushed=True) == PUSHED_PROVISIONING_SECONDS
    assert seconds_to_next_pass(_status(Phase.READY), RESYNC, FAR, pushed=True) == RESYNC


def test_no_wait_runs_past_the_expiry_nor_spins_below_a_second() -> None:
    assert seconds_to_next_pass(_status(Phase.FAILED, spec_valid=False), RESYNC, 42.0) == 42.0
    assert seconds_to_next_pass(_status(Phase.READY), RESYNC, 0.0) == PROVISIONING_SECONDS


# -- the diff base -------------------------------------------------------------------------------

KEY = f"{GROUP}/last-handled-configuration"


def _body(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> kopf.Body:
    return kopf.Body(
        {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": "TestEnvironment",
            "metadata": {"name": "e", "namespace": "ci", "annotations": annotations or {}},
            "spec": spec,
            "status": {"phase": "Ready"},
        }
    )


def test_only_a_digest_of_the_spec_is_stored_however_large_the_spec() -> None:
    storage = DigestDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    spec = {
        "workers": 2,
        "services": [{"name": "a", "type": "redis", "env": [{"name": "X", "value": "y" * 200_000}]}],
    }
    body = _body(spec)
    essence = storage.build(body=body)
    assert essence == {"spec": spec}  # labels and annotations (the heartbeat) are not tracked
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence=essence)
    stored = patch["metadata"]["annotations"][KEY]
    assert len(stored) < 100
    assert json.loads(stored) == {"sha256": digest(essence)}


def test_fetch_sees_no_change_for_the_same_spec_and_a_change_for_another() -> None:
    storage = DigestDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    handled = {"workers": 2, "services": [{"name": "a", "type": "redis"}]}
    stored = json.dumps({"sha256": digest({"spec": handled})})
    same = _body(handled, {KEY: stored, "testenv.dev/heartbeat": "2026-01-01T00:00:00Z"})
    assert storage.fetch(body=same) == storage.build(body=same)
    changed = _body({**handled, "workers": 3}, {KEY: stored})
    old = storage.fetch(body=changed)
    assert old is not None  # None would mean "never handled": the create handler again
    assert old != storage.build(body=changed)
    assert storage.fetch(body=_body(handled)) is None


def test_a_full_copy_left_by_an_older_operator_is_read_as_it_was() -> None:
    storage = DigestDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    handled = {"workers": 2, "services": [{"name": "a", "type": "redis"}]}
    legacy = json.dumps({"spec": handled, "metadata": {"labels": {"team": "a"}}})
    assert storage.fetch(body=_body(handled, {KEY: legacy})) == {
        "spec": handled,
        "metadata": {"labels": {"team": "a"}},
    }


def test_a_ready_environment_passes_on_its_resync_clock_while_the_budget_covers_the_fleet() -> None:
    assert ready_interval(10, 40, 5) == 10
    assert ready_interval(10, 50, 5) == 10


def test_past_the_budget_a_ready_environment_passes_about_when_its_resync_can_be_granted() -> None:
    assert ready_interval(10, 500, 5, spread=lambda low, high: low) == 90
    assert ready_interval(10, 500, 5, spread=lambda low, high: high) == pytest.approx(110)
    spread = {round(ready_interval(10, 500, 5), 3) for _ in range(20)}
    assert len(spread) > 1, "the intervals must differ, or a fleet made together passes together"
    assert all(90 <= s <= 110 for s in spread)
