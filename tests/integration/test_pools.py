"""Warm pools against the real API server: the operator fills them, environments claim from them.

kwok makes the pooled pods Ready, which is what a claim waits for; the services themselves are
the kind tier's business (tests/kind).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes import client

from testenv_api import (
    ANNOTATION_PORT_BASE,
    GROUP,
    LABEL_OWNER_UID,
    LABEL_POOL_UID,
    LABEL_WORKER,
    POOL_PLURAL,
    VERSION,
    ConditionType,
    Phase,
)
from testenv_api.status import workers_from_status
from testenv_harness.ground.waiting import wait_for
from testenv_operator.orphans import sweep_orphans

from . import environments as te

pytestmark = pytest.mark.usefixtures("running_operator")
REDIS_KAFKA = [{"name": "redis", "type": "redis"}, {"name": "kafka", "type": "kafka"}]


@pytest.fixture
def pools(api: client.ApiClient, tenant: str) -> Iterator[list[str]]:
    """Names of the pools a test makes in `tenant`; deleted (and awaited) after it."""
    names: list[str] = []
    yield names
    te.delete_all(api, tenant)  # claimers first: a pool's deletion leaves their workers alone
    for name in names:
        te.delete_pool(api, tenant, name)


def _make_pool(
    api: client.ApiClient, tenant: str, pools: list[str], name: str, size: int, **spec: Any
) -> dict[str, Any]:
    pools.append(name)
    te.create_pool(api, tenant, te.pool_manifest(name, size, REDIS_KAFKA, **spec))
    return te.wait_pool(api, tenant, name, ready=size, free=size, phase="Ready")


def _events(api: client.ApiClient, tenant: str, name: str) -> dict[str, str]:
    events = client.CoreV1Api(api).list_namespaced_event(tenant).items
    return {e.reason: e.message for e in events if e.involved_object.name == name}


def test_a_matching_environment_claims_ready_workers_and_the_pool_refills(
    api: client.ApiClient, tenant: str, pools: list[str]
) -> None:
    pool = _make_pool(api, tenant, pools, "warm", 3, portBase=41000)
    uid = pool["metadata"]["uid"]
    free_before = te.pooled_namespaces(api, uid)
    assert len(free_before) == 3
    bases = sorted(int(ns.metadata.annotations[ANNOTATION_PORT_BASE]) for ns in free_before.values())
    assert bases == [41000, 41002, 41004]  # 2 ports a worker (redis, kafka), blocks side by side

    created = te.create(api, tenant, te.manifest("claimer", workers=2, services=REDIS_KAFKA))
    body = te.wait_phase(api, tenant, "claimer", Phase.READY, readyWorkers=2)
    workers = workers_from_status(body["status"])
    assert {w.namespace for w in workers} <= set(free_before), "the workers are the pool's ready ones"
    assert [w.pool for w in workers] == ["warm", "warm"]
    core = client.CoreV1Api(api)
    for worker in workers:
        ns = core.read_namespace(worker.namespace).metadata
        assert ns.labels[LABEL_OWNER_UID] == created["metadata"]["uid"]
        assert ns.labels[LABEL_WORKER] == str(worker.index)
        assert ns.labels[LABEL_POOL_UID] == uid
        # The ports in status are the block the broker was started for, so the harness forwards them.
        base = int(ns.annotations[ANNOTATION_PORT_BASE])
        assert [p.local_port for s in worker.services for p in s.ports] == [base, base + 1]
        kafka = client.AppsV1Api(api).read_namespaced_deployment("kafka", worker.namespace)
        env = {e.name: e.value for e in kafka.spec.template.spec.containers[0].env}
        assert f"EXTERNAL://localhost:{base + 1}" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "Claimed" in _events(api, tenant, "claimer")

    refilled = te.wait_pool(api, tenant, "warm", ready=3, free=3, claimed=2, phase="Ready")
    now = te.pooled_namespaces(api, uid)
    assert len(now) == 5
    taken = {int(ns.metadata.annotations[ANNOTATION_PORT_BASE]) for ns in now.values()}
    assert len(taken) == 5, "no two live workers of a pool share a port block"
    assert refilled["status"]["message"] == "3 of 3 free workers ready, 2 claimed"

    claimed = {w.namespace for w in workers}
    te.delete(api, tenant, "claimer")
    left = te.pooled_namespaces(api, uid)
    assert not claimed & set(left), "a claimed worker is deleted with its claimer, never handed back"
    assert te.wait_pool(api, tenant, "warm", free=3, claimed=0)["status"]["ready"] == 3


def test_workers_beyond_the_ready_ones_are_made_for_the_claimer(
    api: client.ApiClient, tenant: str, pools: list[str]
) -> None:
    pool = _make_pool(api, tenant, pools, "small", 1)
    te.create(api, tenant, te.manifest("big", workers=3, services=REDIS_KAFKA))
    body = te.wait_phase(api, tenant, "big", Phase.READY, readyWorkers=3)
    workers = workers_from_status(body["status"])
    assert [w.index for w in workers] == [0, 1, 2]
    assert all(w.namespace.startswith("tp-") and w.pool == "small" for w in workers)
    ports = [p.local_port for w in workers for s in w.services for p in s.ports]
    assert len(set(ports)) == 6
    events = _events(api, tenant, "big")
    assert events["Claimed"] == "claimed ready pooled workers [0]"
    assert events["Provisioning"] == "created the namespaces of workers [1, 2]"
    te.wait_pool(api, tenant, "small", ready=1, free=1, claimed=3)
    assert len(te.pooled_namespaces(api, pool["metadata"]["uid"])) == 4


def test_other_services_get_their_own_namespaces(
    api: client.ApiClient, tenant: str, pools: list[str]
) -> None:
    _make_pool(api, tenant, pools, "kafka-pool", 1)
    te.create(api, tenant, te.manifest("redis-only", workers=1))
    body = te.wait_phase(api, tenant, "redis-only", Phase.READY, readyWorkers=1)
    (worker,) = workers_from_status(body["status"])
    assert worker.namespace.startswith("te-")
    assert worker.pool == ""
    assert te.get_pool(api, tenant, "kafka-pool")["status"]["claimed"] == 0


def test_claims_at_once_never_share_a_worker(api: client.ApiClient, tenant: str, pools: list[str]) -> None:
    _make_pool(api, tenant, pools, "race", 4)
    names = [f"racer-{i}" for i in range(4)]
    with ThreadPoolExecutor(4) as threads:
        list(
            threads.map(
                lambda n: te.create(api, tenant, te.manifest(n, workers=2, services=REDIS_KAFKA)), names
            )
        )
    bodies = [te.wait_phase(api, tenant, n, Phase.READY, readyWorkers=2) for n in names]
    namespaces = [w.namespace for b in bodies for w in workers_from_status(b["status"])]
    assert len(namespaces) == len(set(namespaces)) == 8
    ports = [
        p.local_port
        for b in bodies
        for w in workers_from_status(b["status"])
        for s in w.services
        for p in s.ports
    ]
    assert len(set(ports)) == 16, "every claimer's ports differ, so two claimers can share a test machine"


def test_a_deleted_pool_takes_its_free_workers_and_leaves_claimed_ones(
    api: client.ApiClient, tenant: str, pools: list[str]
) -> None:
    pool = _make_pool(api, tenant, pools, "going", 2)
    te.create(api, tenant, te.manifest("stays", workers=1, services=REDIS_KAFKA))
    (worker,) = workers_from_status(
        te.wait_phase(api, tenant, "stays", Phase.READY, readyWorkers=1)["status"]
    )
    te.delete_pool(api, tenant, "going")
    pools.remove("going")
    assert set(te.pooled_namespaces(api, pool["metadata"]["uid"])) == {worker.namespace}
    # The claimer goes on being served, and changing its services now is refused by name.
    te.patch_spec(api, tenant, "stays", {"services": [{"name": "redis", "type": "redis"}]})
    body = te.wait_phase(api, tenant, "stays", Phase.FAILED)
    (spec_valid,) = [c for c in body["status"]["conditions"] if c["type"] == ConditionType.SPEC_VALID]
    assert spec_valid["message"].startswith(
        "spec.services: this environment's workers were claimed from pool going"
    )


def test_the_orphan_sweep_counts_a_pool_as_its_free_workers_owner(
    api: client.ApiClient, tenant: str, pools: list[str]
) -> None:
    pool = _make_pool(api, tenant, pools, "kept", 1)
    (name,) = te.pooled_namespaces(api, pool["metadata"]["uid"])
    assert name not in sweep_orphans(api)
    assert name in te.pooled_namespaces(api, pool["metadata"]["uid"])


def test_a_pool_whose_services_change_replaces_its_free_workers(
    api: client.ApiClient, tenant: str, pools: list[str]
) -> None:
    pool = _make_pool(api, tenant, pools, "changing", 1)
    uid = pool["metadata"]["uid"]
    (old,) = te.pooled_namespaces(api, uid)
    redis_only = [{"name": "redis", "type": "redis"}]
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        tenant,
        POOL_PLURAL,
        "changing",
        {"spec": {"services": redis_only}},
        _content_type="application/merge-patch+json",
    )
    wait_for(
        lambda: old not in te.pooled_namespaces(api, uid) and len(te.pooled_namespaces(api, uid)) == 1,
        timeout=60,
        what="the old free worker to be replaced",
    )
    te.wait_pool(api, tenant, "changing", ready=1, free=1, phase="Ready")
    te.create(api, tenant, te.manifest("after", workers=1, services=redis_only))
    (worker,) = workers_from_status(
        te.wait_phase(api, tenant, "after", Phase.READY, readyWorkers=1)["status"]
    )
    assert worker.pool == "changing"
    deployments = client.AppsV1Api(api).list_namespaced_deployment(worker.namespace).items
    assert [d.metadata.name for d in deployments] == ["redis"]


def test_a_smaller_size_deletes_the_surplus_and_never_a_claimed_worker(
    api: client.ApiClient, tenant: str, pools: list[str]
) -> None:
    pool = _make_pool(api, tenant, pools, "shrinking", 3)
    uid = pool["metadata"]["uid"]
    te.create(api, tenant, te.manifest("holder", workers=1, services=REDIS_KAFKA))
    (worker,) = workers_from_status(
        te.wait_phase(api, tenant, "holder", Phase.READY, readyWorkers=1)["status"]
    )
    te.wait_pool(api, tenant, "shrinking", ready=3, free=3, claimed=1)
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        tenant,
        POOL_PLURAL,
        "shrinking",
        {"spec": {"size": 1}},
        _content_type="application/merge-patch+json",
    )
    te.wait_pool(api, tenant, "shrinking", ready=1, free=1, claimed=1, phase="Ready")
    wait_for(lambda: len(te.pooled_namespaces(api, uid)) == 2, timeout=60, what="the surplus to go")
    assert worker.namespace in te.pooled_namespaces(api, uid)


def test_a_claimed_worker_converges_like_its_environments_own(
    api: client.ApiClient, tenant: str, pools: list[str]
) -> None:
    """Issue 24: an admin-deleted NetworkPolicy or quota of a claimed worker comes back, and
    removing spec.access removes its RoleBinding, as for workers the environment made itself."""
    _make_pool(api, tenant, pools, "guarded", 1)
    access = {"subjects": [{"kind": "ServiceAccount", "name": "ci"}]}
    te.create(api, tenant, te.manifest("guarded", workers=1, services=REDIS_KAFKA, access=access))
    (worker,) = workers_from_status(
        te.wait_phase(api, tenant, "guarded", Phase.READY, readyWorkers=1)["status"]
    )
    assert worker.pool == "guarded"
    ns = worker.namespace
    networking, core, rbac = (
        client.NetworkingV1Api(api),
        client.CoreV1Api(api),
        client.RbacAuthorizationV1Api(api),
    )
    policies = {p.metadata.name for p in networking.list_namespaced_network_policy(ns).items}
    quotas = {q.metadata.name for q in core.list_namespaced_resource_quota(ns).items}
    assert policies
    assert quotas
    assert "testenv-access" in {b.metadata.name for b in rbac.list_namespaced_role_binding(ns).items}

    for name in policies:
        networking.delete_namespaced_network_policy(name, ns)
    for name in quotas:
        core.delete_namespaced_resource_quota(name, ns)
    wait_for(
        lambda: (
            {p.metadata.name for p in networking.list_namespaced_network_policy(ns).items} == policies
            and {q.metadata.name for q in core.list_namespaced_resource_quota(ns).items} == quotas
        ),
        timeout=60,
        what="the claimed worker's NetworkPolicies and quota to come back",
    )

    te.patch_spec(api, tenant, "guarded", {"access": None})
    wait_for(
        lambda: (
            "testenv-access" not in {b.metadata.name for b in rbac.list_namespaced_role_binding(ns).items}
        ),
        timeout=60,
        what="the claimed worker's access binding to go with spec.access",
    )
    assert te.get(api, tenant, "guarded")["status"]["phase"] == Phase.READY
