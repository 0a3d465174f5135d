from __future__ import annotations

import datetime

from testenv_api import ANNOTATION_HEARTBEAT
from testenv_operator.reconciler import expires_at, expiry_reason, seconds_to_expiry

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _body(lifetime: dict[str, int], heartbeat: str | None = None) -> dict[str, object]:
    annotations = {ANNOTATION_HEARTBEAT: heartbeat} if heartbeat else {}
    return {
        "metadata": {"creationTimestamp": "2026-01-01T00:00:00Z", "annotations": annotations},
        "spec": {"lifetime": lifetime},
    }


def test_ttl() -> None:
    body = _body({"ttlSeconds": 600})
    assert expires_at(body) == T0 + datetime.timedelta(seconds=600)
    assert expiry_reason(body, T0 + datetime.timedelta(seconds=599)) is None
    assert "ttlSeconds ran out" in (expiry_reason(body, T0 + datetime.timedelta(seconds=600)) or "")


def test_heartbeat_only_counts_once_one_was_sent() -> None:
    later = T0 + datetime.timedelta(seconds=500)
    assert expiry_reason(_body({"ttlSeconds": 3600, "heartbeatTimeoutSeconds": 60}), later) is None
    fresh = _body({"ttlSeconds": 3600, "heartbeatTimeoutSeconds": 60}, "2026-01-01T00:08:00Z")
    assert expiry_reason(fresh, later) is None
    stale = _body({"ttlSeconds": 3600, "heartbeatTimeoutSeconds": 60}, "2026-01-01T00:01:00Z")
    assert "older than 60s" in (expiry_reason(stale, later) or "")


def test_an_unreadable_heartbeat_never_crashes_and_never_expires() -> None:
    later = T0 + datetime.timedelta(seconds=500)
    for beat in ("2020-01-01T00:00:00", "yesterday", "2026-13-01T00:00:00Z"):
        body = _body({"ttlSeconds": 3600, "heartbeatTimeoutSeconds": 60}, beat)
        assert expiry_reason(body, later) is None, beat


def test_seconds_to_expiry_is_the_nearer_of_ttl_and_heartbeat() -> None:
    later = T0 + datetime.timedelta(seconds=500)
    assert seconds_to_expiry(_body({"ttlSeconds": 600}), later) == 100
    beating = _body({"ttlSeconds": 3600, "heartbeatTimeoutSeconds": 60}, "2026-01-01T00:08:00Z")
    assert seconds_to_expiry(beating, later) == 40
    # Past either deadline it is 0, and an unreadable heartbeat leaves the TTL.
    assert seconds_to_expiry(_body({"ttlSeconds": 60}), later) == 0
    unreadable = _body({"ttlSeconds": 3600, "heartbeatTimeoutSeconds": 60}, "yesterday")
    assert seconds_to_expiry(unreadable, later) == 3100
