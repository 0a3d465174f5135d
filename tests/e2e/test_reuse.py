"""Reuse between runs (`--testenv-reuse`): a kept environment is claimed, reset and released."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from testenv_api import GROUP, LABEL_OWNER_NAMESPACE, PLURAL, VERSION
from testenv_harness.frontends import reuse
from testenv_harness.ground import kube
from testenv_harness.ground.children import alive
from testenv_harness.ground.waiting import wait_for
from testenv_harness.provision.clusters import Cluster
from testenv_harness.run import runstate
from testenv_harness.run.runstate import RunState
from testenv_harness.worker.handoff import Handoff

from .conftest import Run

#: Run 1 leaves data in every service; run 2, on the same kept environment, must find none.
SUITE = """
import os
import time

import boto3
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

PHASE = os.environ["REUSE_PHASE"]


import pytest


@pytest.mark.parametrize("item", range(4))  # -n 2 hands both workers some
def test_services_hold_nothing_of_an_earlier_run(testenv, item):
    r = redis.Redis.from_url(testenv.url("redis"))
    s3 = boto3.client("s3", endpoint_url=testenv.url("aws"), region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    admin = AdminClient({"bootstrap.servers": testenv.url("kafka")})
    topics = set(admin.list_topics(timeout=10).topics)
    if PHASE == "write":
        left = f"left-by-run-1-{item}"
        r.set(left, "x")
        s3.create_bucket(Bucket=left)
        producer = Producer({"bootstrap.servers": testenv.url("kafka")})
        producer.produce(left, value=b"x")
        assert producer.flush(30) == 0
        consumer = Consumer({"bootstrap.servers": testenv.url("kafka"), "group.id": left,
                             "auto.offset.reset": "earliest"})
        consumer.subscribe([left])
        while (message := consumer.poll(1.0)) is None or message.error():
            pass
        consumer.commit(message=message, asynchronous=False)
        consumer.close()
    else:
        assert r.dbsize() == 0, r.keys()
        assert s3.list_buckets()["Buckets"] == []
        assert not {t for t in topics if not t.startswith("__")}, topics
        groups = admin.list_consumer_groups().result(timeout=10).valid
        assert [g.group_id for g in groups] == []
        if item == 0:  # the forwards are the keeper's: it applies the fault for the block
            with testenv.fault("redis", "latency", latency=200):
                began = time.monotonic()
                r.ping()
                assert time.monotonic() - began >= 0.2
            after = []
            for _ in range(3):  # the fastest of three: one ping may be slow on 2 busy cores
                began = time.monotonic()
                r.ping()
                after.append(time.monotonic() - began)
            assert min(after) < 0.2, after
"""


@pytest.fixture
def reuse_suite(pytester: pytest.Pytester, example_suite: Path) -> Path:
    for test in example_suite.glob("test_*.py"):
        test.unlink()
    pytester.makepyfile(test_reuse=SUITE)
    return example_suite


@pytest.fixture
def namespace() -> str:
    return f"reuse-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def keepers() -> Iterator[list[str]]:
    """Names of the keepers a test started: ended (and awaited) afterwards, whatever happened."""
    names: list[str] = []
    yield names
    for name in names:
        state = runstate.load(name)
        if state is not None and state.alive:
            reuse._stop(state)


def _keeper(result: pytest.RunResult) -> str:
    line = next(line for line in result.outlines if "keeper 'reuse-" in line)
    return line.split("keeper '", 1)[1].split("'", 1)[0]


def _clean(cluster: Cluster, namespace: str) -> str:
    core = client.CoreV1Api(kube.api_client(cluster.kubeconfig))
    owned = core.list_namespace(label_selector=f"{LABEL_OWNER_NAMESPACE}={namespace}").items
    return ", ".join(n.metadata.name for n in owned)


def test_a_kept_environment_is_reused_and_shows_nothing_of_the_earlier_run(
    run_suite: Run,
    reuse_suite: Path,
    e2e_cluster: Cluster,
    namespace: str,
    keepers: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    where = (f"--testenv-namespace={namespace}", "--testenv-reuse")
    monkeypatch.setenv("REUSE_PHASE", "write")
    first = run_suite("-n", "2", *where)
    keepers.append(name := _keeper(first))
    first.assert_outcomes(passed=4)
    first.stdout.fnmatch_lines(["*starting keeper*", "*released the environment to the next run*"])
    state = runstate.load(name)
    assert state is not None
    assert state.alive, "the keeper must outlive the run"
    # Released, the environment is reset by its keeper before the next run asks for it.
    log = Path(state.log)
    wait_for(lambda: "reset every service for the next run" in log.read_text(), timeout=60, what="the reset")

    monkeypatch.setenv("REUSE_PHASE", "check")
    page = reuse_suite / "timeline.html"
    second = run_suite("-n", "2", *where, f"--testenv-timeline={page}")
    second.assert_outcomes(passed=4)
    second.stdout.fnmatch_lines([f"*reusing environment * of keeper '{name}'*2 of its 2 worker(s)*"])
    # Its workers only took their endpoints: the keeper holds the forwards, and reset them already.
    steps = {(e["row"], e["name"]) for e in json.loads(page.with_suffix(".json").read_text())["events"]}
    for row in (0, 1):
        assert (row, "forwarded by the reuse keeper") in steps, sorted(steps)
        assert (row, "resetting every service (used before)") not in steps

    fewer = run_suite("-n", "0", *where)  # one worker: the kept one serves it too
    fewer.assert_outcomes(passed=4)
    fewer.stdout.fnmatch_lines(["*reusing environment*1 of its 2 worker(s)*"])

    reuse._stop(state)
    assert not alive(state.pid)
    wait_for(lambda: not _clean(e2e_cluster, namespace), timeout=90, what="the kept environment to go")


def test_a_run_that_finds_the_kept_environment_claimed_makes_its_own(
    run_suite: Run,
    reuse_suite: Path,
    e2e_cluster: Cluster,
    namespace: str,
    keepers: list[str],
    monkeypatch: pytest.MonkeyPatch,
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(
        textwrap.dedent(
            """
            [pytest]
            testenv = true
            testenv_manifest = testenvironment.yaml
            testenv_reuse_idle = 5
            """
        )
    )
    where = (f"--testenv-namespace={namespace}", "--testenv-reuse")
    monkeypatch.setenv("REUSE_PHASE", "check")
    first = run_suite(*where)
    keepers.append(name := _keeper(first))
    first.assert_outcomes(passed=4)
    held = reuse.Claim.take(name)  # as a run in another terminal would hold it
    assert held is not None
    try:
        other = run_suite(*where)
        other.assert_outcomes(passed=4)
        other.stdout.fnmatch_lines(
            [f"*another run holds keeper '{name}'*of its own*", "*deleted in the background*"]
        )
    finally:
        held.release()
    state = runstate.load(name)
    assert state is not None
    # Unclaimed for testenv_reuse_idle (5 s), the keeper tears its environment down and exits.
    wait_for(lambda: not alive(state.pid), timeout=60, what="the idle keeper to exit")
    wait_for(lambda: not _clean(e2e_cluster, namespace), timeout=90, what="the kept environment to go")


#: One Redis per worker is enough to tell a kept environment from a fresh one.
REDIS_SUITE = """
import redis


def test_redis_answers(testenv):
    assert redis.Redis.from_url(testenv.url("redis")).ping()
"""


@pytest.fixture
def redis_suite(pytester: pytest.Pytester) -> Path:
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_services = redis\n")
    pytester.makepyfile(test_redis=REDIS_SUITE)
    return pytester.path


def _kept(name: str) -> RunState:
    state = runstate.load(name)
    assert state is not None, f"keeper {name!r} left no state"
    assert state.alive, f"keeper {name!r} must outlive the run"
    return state


def _delete_environment(cluster: Cluster, state: RunState) -> Handoff:
    """Delete the keeper's TestEnvironment behind its back, as `kubectl delete te` would."""
    handoff = state.handoff_object()
    client.CustomObjectsApi(kube.api_client(cluster.kubeconfig)).delete_namespaced_custom_object(
        GROUP, VERSION, handoff.namespace, PLURAL, handoff.name
    )
    return handoff


def _environment_exists(cluster: Cluster, handoff: Handoff) -> bool:
    try:
        client.CustomObjectsApi(kube.api_client(cluster.kubeconfig)).get_namespaced_custom_object(
            GROUP, VERSION, handoff.namespace, PLURAL, handoff.name
        )
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_a_keeper_whose_environment_is_deleted_exits_and_the_next_run_sets_up_afresh(
    run_suite: Run, redis_suite: Path, e2e_cluster: Cluster, namespace: str, keepers: list[str]
) -> None:
    where = (f"--testenv-namespace={namespace}", "--testenv-reuse")
    first = run_suite(*where)
    keepers.append(name := _keeper(first))
    first.assert_outcomes(passed=1)
    state = _kept(name)
    log = Path(state.log)
    gone = _delete_environment(e2e_cluster, state)
    started = time.monotonic()
    # It reads its environment every 2 s and exits once it has been gone for 5 s, after teardown.
    wait_for(lambda: not state.alive, timeout=60, what=f"keeper {name!r} to notice and exit")
    took = time.monotonic() - started
    assert took < 60
    said = log.read_text()
    assert f"environment {gone.namespace}/{gone.name} " in said
    assert f"keeper {name!r} tears down what it holds and exits" in said
    assert runstate.load(name) is None, "the keeper forgot its run when it exited"

    second = run_suite(*where)
    second.assert_outcomes(passed=1)
    second.stdout.fnmatch_lines(["*starting keeper*"])
    assert "NotFoundException" not in second.stdout.str()
    fresh = _kept(name)
    assert fresh.pid != state.pid
    assert fresh.handoff_object().name != gone.name, "a fresh environment, not the deleted one"
    reuse._stop(fresh)
    wait_for(lambda: not _clean(e2e_cluster, namespace), timeout=90, what="the kept environment to go")


def test_a_run_that_claims_a_keeper_whose_environment_is_gone_sets_up_afresh(
    run_suite: Run, redis_suite: Path, e2e_cluster: Cluster, namespace: str, keepers: list[str]
) -> None:
    """The keeper is stopped (SIGSTOP), so it cannot notice: the claim itself must check."""
    where = (f"--testenv-namespace={namespace}", "--testenv-reuse")
    first = run_suite(*where)
    keepers.append(name := _keeper(first))
    first.assert_outcomes(passed=1)
    state = _kept(name)
    os.kill(state.pid, signal.SIGSTOP)
    try:
        gone = _delete_environment(e2e_cluster, state)
        # Its operator, a process of its own, is not stopped: it finishes the deletion.
        wait_for(lambda: not _environment_exists(e2e_cluster, gone), timeout=90, what="the environment to go")
        second = run_suite(*where)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGCONT)
    second.assert_outcomes(passed=1)
    second.stdout.fnmatch_lines(
        [
            f"*keeper '{name}' (process {state.pid}): environment {gone.namespace}/{gone.name} is gone "
            "from the cluster (404*ending it and setting up a fresh environment",
            "*starting keeper*",
        ]
    )
    assert "NotFoundException" not in second.stdout.str()
    assert not state.alive, "the stale keeper was ended"
    fresh = _kept(name)
    assert fresh.handoff_object().name != gone.name
    reuse._stop(fresh)
    wait_for(lambda: not _clean(e2e_cluster, namespace), timeout=90, what="the kept environment to go")
