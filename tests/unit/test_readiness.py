"""Status aggregation: worker phases, the environment phase, and conditions."""

from __future__ import annotations

from testenv_api import FAULT_PROXY_ADMIN_PORT, KAFKA_EXTERNAL_PORT, ConditionType, Phase, primary_port
from testenv_api.status import WorkerStatus, workers_from_status
from testenv_operator.manifests import Owner
from testenv_operator.plan import plan_environment
from testenv_operator.readiness import NamespaceState, Observed, condition, environment_phase, worker_status
from testenv_operator.settings import Settings

OWNER = Owner("team", "env", "uid-1")
SPEC = {
    "workers": 2,
    "portBase": 21000,
    "services": [{"name": "redis", "type": "redis"}, {"name": "kafka", "type": "kafka"}],
}
PLANS = plan_environment(OWNER, SPEC, Settings())


def _observed(ready: set[tuple[str, str]], namespaces: dict[str, NamespaceState] | None = None) -> Observed:
    if namespaces is None:
        namespaces = {p.namespace: NamespaceState(OWNER.uid) for p in PLANS}
    return Observed(namespaces, frozenset(ready), frozenset())


def test_ready_worker_publishes_hosts_ports_and_urls() -> None:
    plan = PLANS[1]
    status = worker_status(
        plan, _observed({(plan.namespace, "redis"), (plan.namespace, "kafka")}), OWNER.uid, False
    )
    assert status.phase == Phase.READY
    redis, kafka = status.services
    assert redis.host == f"redis.{plan.namespace}.svc"
    assert (redis.primary.port, redis.primary.local_port) == (primary_port("redis"), 21002)
    assert redis.url == "redis://localhost:21002"
    assert (kafka.primary.port, kafka.primary.local_port) == (KAFKA_EXTERNAL_PORT, 21003)
    assert kafka.url == "localhost:21003"


def test_status_round_trips_through_the_contract() -> None:
    plan = PLANS[0]
    status = worker_status(plan, _observed({(plan.namespace, "redis")}), OWNER.uid, False)
    (parsed,) = workers_from_status({"workers": [status.to_dict()]})
    assert parsed == status
    assert parsed.service("kafka").ready is False


def test_a_service_behind_a_fault_proxy_says_where_its_api_is() -> None:
    spec = {**SPEC, "services": [{"name": "redis", "type": "redis", "faultProxy": True}, SPEC["services"][1]]}
    plan = plan_environment(OWNER, spec, Settings())[0]
    status = worker_status(plan, _observed({(plan.namespace, "redis")}), OWNER.uid, False)
    redis, kafka = status.services
    assert (redis.fault_proxy_port, kafka.fault_proxy_port) == (FAULT_PROXY_ADMIN_PORT, 0)
    assert redis.to_dict()["faultProxyPort"] == FAULT_PROXY_ADMIN_PORT
    assert "faultProxyPort" not in kafka.to_dict(), "absent, as the CRD describes it"
    (parsed,) = workers_from_status({"workers": [status.to_dict()]})
    assert parsed == status


def test_waiting_worker_says_for_what() -> None:
    status = worker_status(PLANS[0], _observed({(PLANS[0].namespace, "redis")}), OWNER.uid, False)
    assert status.phase == Phase.PROVISIONING
    assert status.message == "waiting for kafka to become ready"


def test_worker_that_was_ready_becomes_degraded() -> None:
    assert worker_status(PLANS[0], _observed(set()), OWNER.uid, True).phase == Phase.DEGRADED


def test_foreign_namespace_is_a_failure_that_explains_itself() -> None:
    namespaces = {PLANS[0].namespace: NamespaceState("someone-else")}
    status = worker_status(PLANS[0], _observed(set(), namespaces), OWNER.uid, False)
    assert status.phase == Phase.FAILED
    assert "not owned by this TestEnvironment" in status.message
    assert "left untouched" in status.message


def test_terminating_namespace_is_recreated_later() -> None:
    namespaces = {PLANS[0].namespace: NamespaceState(OWNER.uid, terminating=True)}
    status = worker_status(PLANS[0], _observed(set(), namespaces), OWNER.uid, True)
    assert status.phase == Phase.PROVISIONING
    assert "recreated" in status.message


def _worker(index: int, phase: Phase) -> WorkerStatus:
    return WorkerStatus(index, f"ns-{index}", phase.value, ())


def test_environment_phase() -> None:
    ready, waiting = _worker(0, Phase.READY), _worker(1, Phase.PROVISIONING)
    assert environment_phase([ready, ready], None) == (Phase.READY, "all 2 workers ready")
    assert environment_phase([ready, waiting], None)[0] == Phase.PROVISIONING
    assert environment_phase([ready, waiting], Phase.READY) == (Phase.DEGRADED, "1/2 workers ready")
    assert environment_phase([ready, _worker(1, Phase.FAILED)], Phase.READY)[0] == Phase.FAILED


def test_condition_keeps_its_transition_time_while_unchanged() -> None:
    ready = ConditionType.READY
    first = condition([], ready, True, "AllWorkersReady", "", 1)
    first["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    assert (
        condition([first], ready, True, "AllWorkersReady", "", 2)["lastTransitionTime"]
        == "2020-01-01T00:00:00Z"
    )
    assert condition([first], ready, False, "X", "", 2)["lastTransitionTime"] != "2020-01-01T00:00:00Z"
