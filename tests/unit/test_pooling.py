"""The pure parts of warm pools: port blocks, what a pooled namespace says, who may claim."""

from __future__ import annotations

import pytest

from testenv_api import (
    ANNOTATION_POOL_NAME,
    ANNOTATION_PORT_BASE,
    LABEL_OWNER_UID,
    LABEL_POOL_UID,
    LABEL_WORKER,
)
from testenv_api.status import WorkerStatus
from testenv_operator.naming import pool_namespace
from testenv_operator.pooling import (
    ANNOTATION_SERVICES_DIGEST,
    Pool,
    Slot,
    next_block,
    services_digest,
    slot_ports,
)

REDIS_KAFKA = [{"name": "redis", "type": "redis"}, {"name": "kafka", "type": "kafka"}]


@pytest.mark.parametrize(
    ("taken", "expected"),
    [
        ([], 40000),
        ([40000], 40002),
        ([40002], 40000),  # a freed first block is used again
        ([40000, 40002, 40006], 40004),
        ([40001], 40004),  # a block from an earlier portBase still counts: both 40000 and 40002 overlap it
    ],
)
def test_next_block_is_the_lowest_that_overlaps_none(taken: list[int], expected: int) -> None:
    assert next_block(taken, 40000, 2) == expected


def test_slot_ports_are_the_block_in_service_order() -> None:
    ports = slot_ports(REDIS_KAFKA, 41000)
    assert [(p.service, p.local_port) for p in ports] == [("redis", 41000), ("kafka", 41001)]


def _namespace(owner: str, pool: str = "pool-uid", terminating: bool = False) -> dict[str, object]:
    meta: dict[str, object] = {
        "name": "tp-ci-warm-abc123-0f3e2a",
        "labels": {LABEL_POOL_UID: pool, LABEL_OWNER_UID: owner, LABEL_WORKER: "3"},
        "annotations": {
            ANNOTATION_POOL_NAME: "warm",
            ANNOTATION_PORT_BASE: "41004",
            ANNOTATION_SERVICES_DIGEST: services_digest(REDIS_KAFKA),
        },
        "creationTimestamp": "2026-12-06T02:00:00Z",
        "resourceVersion": "812",
    }
    if terminating:
        meta["deletionTimestamp"] = "2026-12-06T02:01:00Z"
    return {"metadata": meta}


def test_a_slot_is_free_while_its_pool_owns_it() -> None:
    free = Slot.of(_namespace("pool-uid"))
    assert free.free
    assert (free.pool_name, free.port_base, free.worker, free.resource_version) == ("warm", 41004, 3, "812")
    assert not Slot.of(_namespace("claimer-uid")).free
    assert not Slot.of(_namespace("pool-uid", terminating=True)).free


def test_a_pool_serves_only_the_same_services() -> None:
    pool = Pool("ci", "warm", "pool-uid", {"services": REDIS_KAFKA})
    assert pool.serves({"services": [dict(s) for s in REDIS_KAFKA]})
    assert not pool.serves({"services": REDIS_KAFKA[:1]})
    assert not pool.serves({"services": [REDIS_KAFKA[0], {**REDIS_KAFKA[1], "image": "apache/kafka:4.0.0"}]})
    assert not Pool("ci", "empty", "uid", {}).serves({"services": REDIS_KAFKA})
    assert (pool.size, pool.port_base) == (2, 30000)  # the CRD's defaults when a body lacks them


def test_pool_namespaces_fit_and_differ_by_token() -> None:
    first = pool_namespace("ci", "w" * 80, "uid", "a1b2c3")
    assert len(first) <= 63
    assert first.startswith("tp-ci-www")
    assert first.endswith("-a1b2c3")
    assert first != pool_namespace("ci", "w" * 80, "uid", "d4e5f6")
    with pytest.raises(ValueError, match="token"):
        pool_namespace("ci", "warm", "uid", "Not-OK")


def test_worker_status_carries_its_pool_only_when_pooled() -> None:
    pooled = WorkerStatus(0, "tp-x", "Ready", (), pool="warm")
    assert WorkerStatus.from_dict(pooled.to_dict()) == pooled
    assert "pool" not in WorkerStatus(0, "te-x", "Ready", ()).to_dict()
