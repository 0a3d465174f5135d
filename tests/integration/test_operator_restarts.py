"""Operator crashes, leftovers and rivals: these tests start (and kill) their own operator processes.

The tests marked `chaos` (`make test-chaos`) inject faults at load: kill -9 while ten environments
provision and while ten delete, create/delete churn with the operator restarted at random
points, and two operators electing one leader. Each prints what it injected and what it found.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from testenv_api import (
    GROUP,
    LABEL_MANAGED_BY,
    LABEL_OWNER_NAME,
    LABEL_OWNER_NAMESPACE,
    LABEL_OWNER_UID,
    MANAGED_BY,
    PLURAL,
    VERSION,
    Phase,
)
from testenv_harness.ground.waiting import wait_for
from testenv_harness.provision.clusters import Cluster
from testenv_harness.provision.operator_process import OperatorProcess

from . import environments as te

pytestmark = pytest.mark.usefixtures("crd")


@pytest.fixture
def operators(local_cluster: Cluster, tmp_path: Path) -> Iterator[list[OperatorProcess]]:
    started: list[OperatorProcess] = []
    yield started
    for process in started:
        process.stop()


def _start(
    cluster: Cluster, tmp_path: Path, started: list[OperatorProcess], **settings: str
) -> OperatorProcess:
    process = OperatorProcess(
        cluster.kubeconfig, tmp_path / f"operator-{len(started)}.log", **te.OPERATOR_SETTINGS, **settings
    ).start()
    started.append(process)
    return process


def test_killed_mid_provisioning_converges_after_restart(
    api: client.ApiClient,
    tenant: str,
    local_cluster: Cluster,
    tmp_path: Path,
    operators: list[OperatorProcess],
) -> None:
    first = _start(local_cluster, tmp_path, operators)
    uid = te.create(api, tenant, te.manifest("crash", workers=16))["metadata"]["uid"]
    wait_for(lambda: te.owned_namespaces(api, uid), timeout=30, what="provisioning to start")
    first.kill()
    made = len(te.owned_namespaces(api, uid))
    _start(local_cluster, tmp_path, operators)
    te.wait_phase(api, tenant, "crash", Phase.READY, timeout=120, readyWorkers=16)
    assert len(te.owned_namespaces(api, uid)) == 16
    assert made >= 1
    te.delete(api, tenant, "crash")  # while this test's operator still runs
    assert te.owned_namespaces(api, uid) == []


def test_orphaned_namespaces_are_swept_and_foreign_ones_are_not(
    api: client.ApiClient, local_cluster: Cluster, tmp_path: Path, operators: list[OperatorProcess]
) -> None:
    core = client.CoreV1Api(api)
    # A live owner whose namespace's name label does not say its name (labels are hints; someone
    # may edit one): the sweep must judge by UID and keep the namespace.
    live = te.create(api, "default", te.manifest("live-owner", workers=1))
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name="not-ours", labels={"team": "x"}))
    )
    try:
        _start(local_cluster, tmp_path, operators, TESTENV_SWEEP_SECONDS="1")
        te.wait_phase(api, "default", "live-owner", Phase.READY, readyWorkers=1)
        [owned] = te.owned_namespaces(api, live["metadata"]["uid"])
        core.patch_namespace(owned.metadata.name, {"metadata": {"labels": {LABEL_OWNER_NAME: "live-own"}}})
        # Made only now, so the sweep that takes it ran after the live owner's namespace existed.
        core.create_namespace(
            client.V1Namespace(
                metadata=client.V1ObjectMeta(
                    name="te-orphan-w0",
                    labels={
                        LABEL_MANAGED_BY: MANAGED_BY,
                        LABEL_OWNER_UID: "00000000-dead-beef-0000-000000000000",
                        LABEL_OWNER_NAME: "long-gone",
                        LABEL_OWNER_NAMESPACE: "default",
                    },
                )
            )
        )

        def swept() -> bool:
            try:
                return core.read_namespace("te-orphan-w0").metadata.deletion_timestamp is not None
            except ApiException as exc:
                return exc.status == 404

        assert wait_for(swept, timeout=30, what="the orphan to be deleted")
        assert core.read_namespace("not-ours").metadata.deletion_timestamp is None
        kept = core.read_namespace(owned.metadata.name).metadata
        assert kept.deletion_timestamp is None
        assert kept.labels[LABEL_OWNER_NAME] == "live-own"
    finally:
        core.delete_namespace("not-ours")
        te.delete(api, "default", "live-owner")


# -- chaos: faults at load ------------------------------------------------------------------------


def _say(line: str) -> None:
    print(f"[chaos] {line}", flush=True)


def _objects_per_worker(api: client.ApiClient, namespace: str) -> dict[str, int]:
    """How many of each kind the operator made in one worker namespace (duplicates would show)."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    return {
        "Deployment": len(apps.list_namespaced_deployment(namespace).items),
        "Service": len(core.list_namespaced_service(namespace).items),
        "ResourceQuota": len(core.list_namespaced_resource_quota(namespace).items),
        "LimitRange": len(core.list_namespaced_limit_range(namespace).items),
        "NetworkPolicy": len(client.NetworkingV1Api(api).list_namespaced_network_policy(namespace).items),
    }


def _managed_from(api: client.ApiClient, tenant: str) -> list[str]:
    selector = f"{LABEL_OWNER_NAMESPACE}={tenant}"
    return [n.metadata.name for n in client.CoreV1Api(api).list_namespace(label_selector=selector).items]


@pytest.mark.chaos
def test_kill_9_while_ten_provision_and_while_ten_delete_leaks_and_doubles_nothing(
    api: client.ApiClient,
    tenant: str,
    local_cluster: Cluster,
    tmp_path: Path,
    operators: list[OperatorProcess],
) -> None:
    names = [f"load-{i}" for i in range(10)]
    first = _start(local_cluster, tmp_path, operators)
    uids = [te.create(api, tenant, te.manifest(n, workers=2))["metadata"]["uid"] for n in names]
    wait_for(lambda: _managed_from(api, tenant), timeout=60, what="provisioning to start")
    first.kill()
    made = len(_managed_from(api, tenant))
    _say(f"kill -9 of the operator with {made} of 20 worker namespaces made")
    _start(local_cluster, tmp_path, operators)
    for name in names:
        te.wait_phase(api, tenant, name, Phase.READY, timeout=180, readyWorkers=2)
    baseline = _objects_per_worker(api, te.owned_namespaces(api, uids[0])[0].metadata.name)
    assert baseline["Deployment"] == baseline["Service"] == 1, baseline
    for uid in uids:
        owned = te.owned_namespaces(api, uid)
        assert len(owned) == 2
        for ns in owned:
            assert _objects_per_worker(api, ns.metadata.name) == baseline, ns.metadata.name
    _say(f"after the restart: 10 Ready, 20 namespaces, each with {baseline}")

    objects = client.CustomObjectsApi(api)
    for name in names:
        objects.delete_namespaced_custom_object(GROUP, VERSION, tenant, PLURAL, name)
    wait_for(
        lambda: any(ns.metadata.deletion_timestamp for uid in uids for ns in te.owned_namespaces(api, uid)),
        timeout=60,
        what="deletion to start",
    )
    operators[-1].kill()
    _say(f"kill -9 of the operator with {len(_managed_from(api, tenant))} namespaces still there")
    _start(local_cluster, tmp_path, operators)
    te.delete_many(api, tenant, names, timeout=180)
    assert _managed_from(api, tenant) == []
    _say("after the restart: 0 environments, 0 namespaces left")


@pytest.mark.chaos
def test_churn_with_operator_restarts_leaves_nothing_stuck_or_behind(
    api: client.ApiClient,
    tenant: str,
    local_cluster: Cluster,
    tmp_path: Path,
    operators: list[OperatorProcess],
) -> None:
    """100 create/delete cycles in 10 slots while the operator is killed (-9) or stopped at random
    points (seeded, so a failure can be replayed). A cycle asks for its environment's deletion and
    goes on to the next, so deletions (each at least 5 s: the namespace controller's fixed grace)
    pile up under the restarts instead of being waited out one by one; the restarts go on until
    every environment and namespace is gone."""
    seed = int(time.time())
    chance = random.Random(seed)
    _start(local_cluster, tmp_path, operators)
    done = threading.Event()
    restarts: list[str] = []

    def restart_now_and_then() -> None:
        while not done.wait(chance.uniform(1.5, 4.5)):
            how = chance.choice(["kill -9", "SIGTERM"])
            operators[-1].kill() if how == "kill -9" else operators[-1].stop()
            restarts.append(how)
            _start(local_cluster, tmp_path, operators)

    def cycles(slot: int) -> list[str]:
        names = [f"churn-{slot}-{cycle}" for cycle in range(10)]
        for name in names:
            te.create(api, tenant, te.manifest(name, workers=1))
            te.wait_phase(api, tenant, name, Phase.READY, timeout=180, readyWorkers=1)
            te.ask_to_delete(api, tenant, [name])
        return names

    restarter = threading.Thread(target=restart_now_and_then, daemon=True)
    restarter.start()
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(10) as pool:
            names = [name for slot in pool.map(cycles, range(10)) for name in slot]
        cycled = time.monotonic() - started
        te.delete_many(api, tenant, names, timeout=180)
    finally:
        done.set()
        restarter.join(60)
    _say(
        f"seed {seed}: {len(names)} create/Ready/delete cycles in {cycled:.0f}s, every deletion done "
        f"{time.monotonic() - started:.0f}s after the start, with {len(restarts)} operator restarts "
        f"({restarts.count('kill -9')} kill -9)"
    )
    assert len(names) == 100
    assert restarts, "no restart happened: the cycles finished before the first one"
    listing = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, tenant, PLURAL)
    assert listing["items"] == []
    assert _managed_from(api, tenant) == []


def _lease_holder(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return {}
        raise
    return {"holder": lease.spec.holder_identity, "transitions": lease.spec.lease_transitions or 0}


def _pid_of(holder: str | None) -> int:
    """The pid in a holder identity (host_pid_nonce); 0 for none."""
    return int((holder or "_0_").split("_")[-2])


def _holds(api: client.ApiClient, lease: str, process: OperatorProcess) -> bool:
    assert process.proc is not None
    return _pid_of(_lease_holder(api, "default", lease).get("holder")) == process.proc.pid


@pytest.mark.chaos
def test_two_operators_elect_one_and_a_standby_takes_over_a_killed_leader(
    api: client.ApiClient,
    tenant: str,
    local_cluster: Cluster,
    tmp_path: Path,
    operators: list[OperatorProcess],
) -> None:
    lease = f"operator-{uuid.uuid4().hex[:6]}"
    elect = {"TESTENV_LEADER_ELECTION": f"default/{lease}", "TESTENV_LEASE_SECONDS": "6"}
    pair = [_start(local_cluster, tmp_path, operators, **elect) for _ in range(2)]
    holder = wait_for(lambda: _lease_holder(api, "default", lease).get("holder"), timeout=30, what="a leader")
    leader = next(p for p in pair if _holds(api, lease, p))
    standby = next(p for p in pair if p is not leader)
    assert holder

    te.create(api, tenant, te.manifest("first", workers=2))
    te.wait_phase(api, tenant, "first", Phase.READY, readyWorkers=2)
    assert "standby: the Lease" in standby.log.read_text()
    assert "first" not in standby.log.read_text()  # it never touched the environment

    leader.kill()
    killed = time.monotonic()
    te.create(api, tenant, te.manifest("second", workers=1))
    te.wait_phase(api, tenant, "second", Phase.READY, timeout=90, readyWorkers=1)
    took_over = time.monotonic() - killed
    assert _holds(api, lease, standby)
    assert _lease_holder(api, "default", lease)["transitions"] >= 1
    _say(f"kill -9 of the leader: the standby served a new environment {took_over:.1f}s later (lease 6 s)")

    # A clean stop gives the Lease up, so a new candidate need not wait it out.
    successor = _start(local_cluster, tmp_path, operators, **elect)
    standby.stop()
    released = _lease_holder(api, "default", lease)["holder"]
    assert released in (None, "") or (successor.proc and _pid_of(released) == successor.proc.pid)
    stopped = time.monotonic()
    wait_for(
        lambda: (
            successor.proc and _pid_of(_lease_holder(api, "default", lease)["holder"]) == successor.proc.pid
        ),
        timeout=30,
        what="the successor to take the released Lease",
    )
    _say(f"SIGTERM of the leader: the successor held the Lease {time.monotonic() - stopped:.1f}s later")
    te.delete_many(api, tenant, ["first", "second"])
    client.CoordinationV1Api(api).delete_namespaced_lease(lease, "default")


def test_a_finishing_operator_ends_the_deletions_under_way_then_exits_and_starts_nothing_new(
    api: client.ApiClient,
    tenant: str,
    local_cluster: Cluster,
    tmp_path: Path,
    operators: list[OperatorProcess],
) -> None:
    """What a run that does not wait for its teardown relies on (SIGUSR1, `finishing`)."""
    first = _start(local_cluster, tmp_path, operators, TESTENV_NAMESPACES=tenant)
    old = te.create(api, tenant, te.manifest("old", workers=2))["metadata"]["uid"]
    te.wait_phase(api, tenant, "old", Phase.READY, readyWorkers=2)
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, tenant, PLURAL, "old")
    assert first.finish_in_background(), first.tail()
    new = te.create(api, tenant, te.manifest("new", workers=1))["metadata"]["uid"]
    assert first.proc is not None
    assert first.proc.wait(60) == 0, first.tail()
    assert te.owned_namespaces(api, old) == []
    with pytest.raises(ApiException) as gone:
        te.get(api, tenant, "old")
    assert gone.value.status == 404
    assert te.owned_namespaces(api, new) == [], "a finishing operator must leave new work to others"
    assert "phase" not in (te.get(api, tenant, "new").get("status") or {})
    _start(local_cluster, tmp_path, operators, TESTENV_NAMESPACES=tenant)  # serves "new" from here on
    te.wait_phase(api, tenant, "new", Phase.READY, readyWorkers=1)
    te.delete(api, tenant, "new")
