"""The one wait primitive: first truthy result, or a timeout that says what, how long, what was seen."""

from __future__ import annotations

import itertools

import pytest

from testenv_harness.ground.waiting import WaitTimeoutError, wait_for


def test_returns_the_first_truthy_result() -> None:
    results = iter([None, 0, "", "found"])
    assert wait_for(lambda: next(results), timeout=5, what="a result", interval=0) == "found"


def test_checks_once_even_with_no_time_at_all() -> None:
    assert wait_for(lambda: 42, timeout=0, what="the answer") == 42


def test_a_timeout_names_what_how_long_and_the_last_result() -> None:
    counter = itertools.count()
    with pytest.raises(WaitTimeoutError) as raised:
        wait_for(lambda: next(counter) < 0, timeout=0.05, what="a negative count", interval=0.01)
    assert isinstance(raised.value, TimeoutError)
    assert str(raised.value) == "timed out after 0s waiting for a negative count (last seen: False)"
    assert (raised.value.what, raised.value.timeout) == ("a negative count", 0.05)


def test_seen_describes_the_state_instead() -> None:
    with pytest.raises(WaitTimeoutError, match=r"waiting for 3 pods \(last seen: 1 of 3 pods\)"):
        wait_for(lambda: None, timeout=0, what="3 pods", seen=lambda: "1 of 3 pods")


def test_retried_exceptions_are_what_was_seen_and_others_end_the_wait() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError("no listener")

    with pytest.raises(WaitTimeoutError, match=r"last seen: ConnectionRefusedError: no listener"):
        wait_for(refused, timeout=0.05, what="a listener", interval=0.01, retry=(OSError,))
    with pytest.raises(ConnectionRefusedError):
        wait_for(refused, timeout=5, what="a listener")
