from __future__ import annotations

import re

import pytest

from testenv_operator.naming import MAX_NAME, worker_namespace

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def test_short_names_stay_readable() -> None:
    name = worker_namespace("team-a", "checkout", "uid-1", 3)
    assert name.startswith("te-team-a-checkout-")
    assert name.endswith("-w3")


def test_deterministic() -> None:
    assert worker_namespace("a", "b", "u", 0) == worker_namespace("a", "b", "u", 0)


@pytest.mark.parametrize("index", [0, 9, 255])
def test_long_names_fit_in_a_dns_label(index: int) -> None:
    name = worker_namespace("n" * 63, "e" * 253, "uid", index)
    assert len(name) <= MAX_NAME
    assert DNS_LABEL.match(name), name


def test_names_sharing_a_long_prefix_do_not_collide() -> None:
    stem = "x" * 80
    assert worker_namespace("ns", stem + "a", "u", 0) != worker_namespace("ns", stem + "b", "u", 0)


def test_recreated_environment_gets_fresh_namespaces() -> None:
    assert worker_namespace("ns", "e", "uid-old", 0) != worker_namespace("ns", "e", "uid-new", 0)


def test_characters_outside_dns_labels_are_replaced() -> None:
    assert DNS_LABEL.match(worker_namespace("ns", "My.Env", "u", 1))


def test_negative_index_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        worker_namespace("ns", "e", "u", -1)
