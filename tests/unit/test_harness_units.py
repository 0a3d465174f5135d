"""Harness logic that needs no cluster: handoff, options, Kafka config, probes, helpers."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from testenv_api import ANNOTATION_SERVICE_TYPE, KAFKA_EXTERNAL_PORT, KAFKA_INTERNAL_PORT, Phase
from testenv_api.status import PortStatus, ServiceStatus, WorkerStatus
from testenv_harness.dataplane.runners import PodSpec, RunnerError, launch_for, pod_spec
from testenv_harness.ground import localports
from testenv_harness.ground.errors import TestEnvError
from testenv_harness.run.options import parse_services
from testenv_harness.services import catalog
from testenv_harness.services.kafka import runtime as kafka_runtime
from testenv_harness.worker.handoff import Handoff, SetUpError, Slots, publish, publish_failure, receive
from testenv_harness.worker.testenv import TestEnv
from testenv_operator.catalog import kafka_environment


def test_a_crashed_workers_replacement_takes_its_freed_slot_and_knows_it_is_reused() -> None:
    slots = Slots(2)
    assert slots.take("gw0") == (0, False)
    assert slots.take("gw1") == (1, False)
    slots.release("gw1")  # gw1 crashed
    assert slots.take("gw2") == (1, True), "gw2 is worker 1 again, and must reset what gw1 left"
    with pytest.raises(TestEnvError, match="no free worker slot for gw3"):
        slots.take("gw3")


def test_handoff_is_published_once_and_failures_carry_their_cause(tmp_path: Path) -> None:
    handoff = Handoff("/k", "default", "run-1", "abc123", str(tmp_path), "local", 60.0)
    assert Handoff.from_json(handoff.to_json()) == handoff
    with pytest.raises(SetUpError, match="timed out after 0s waiting for the run's environment to be set up"):
        receive(tmp_path, timeout=0)
    publish(tmp_path, handoff)
    assert receive(tmp_path, timeout=1) == handoff
    publish_failure(tmp_path, "kind cannot start here: no Docker engine answers")
    with pytest.raises(SetUpError, match="could not set the run up: kind cannot start here"):
        receive(tmp_path, timeout=1)


def test_services_from_the_ini_option() -> None:
    assert parse_services(["redis", "events:kafka"]) == [
        {"name": "redis", "type": "redis"},
        {"name": "events", "type": "kafka"},
    ]
    with pytest.raises(ValueError, match="unknown type 'memcached'; use one of redis"):
        parse_services(["memcached"])


def test_kafka_properties_move_listeners_to_host_ports_but_keep_the_advertised_local_port() -> None:
    env = kafka_environment("te-ns-w0", "kafka", 21001)
    ports = {KAFKA_EXTERNAL_PORT: 40001, KAFKA_INTERNAL_PORT: 40002}
    props = kafka_runtime.server_properties(env, ports, Path("/data"))
    assert props["process.roles"] == "broker,controller"
    listeners = dict(item.split("://") for item in props["listeners"].split(","))
    assert listeners["EXTERNAL"] == "127.0.0.1:40001"
    assert listeners["INTERNAL"] == "127.0.0.1:40002"
    controller_port = listeners["CONTROLLER"].rsplit(":", 1)[1]
    assert props["controller.quorum.voters"] == f"1@127.0.0.1:{controller_port}"
    assert "EXTERNAL://localhost:21001" in props["advertised.listeners"]
    assert "INTERNAL://127.0.0.1:40002" in props["advertised.listeners"]
    assert props["log.dirs"] == "/data"
    assert props["cluster.id"] == env["CLUSTER_ID"]


def test_kafka_variable_names_map_like_the_image_does() -> None:
    assert kafka_runtime._property_name("KAFKA_LOG_RETENTION_MS") == "log.retention.ms"
    assert kafka_runtime._property_name("KAFKA_LISTENER_NAME_X___Y") == "listener.name.x-y"
    assert kafka_runtime._property_name("KAFKA_SOME__UNDERSCORE") == "some_underscore"


def _serve_once(answer: bytes) -> int:
    server = socket.create_server(("127.0.0.1", 0))
    port: int = server.getsockname()[1]

    def handle() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(answer)
        server.close()

    threading.Thread(target=handle, daemon=True).start()
    return port


@pytest.mark.parametrize(
    ("kind", "answer", "ok"),
    [
        ("redis", b"+PONG\r\n", True),
        ("redis", b"-ERR\r\n", False),
        ("moto", b"HTTP/1.1 404 Not Found\r\n\r\n", True),
        ("kafka", b"\x00\x00\x00\x10\x00\x00\x00\x07rest", True),
        ("kafka", b"\x00\x00\x00\x10\x00\x00\x00\x08rest", False),
        ("postgres", b"N", True),
        ("mosquitto", b"\x20\x02\x00\x00", True),
    ],
)
def test_protocol_pings(kind: str, answer: bytes, ok: bool) -> None:
    assert catalog.ping(kind, _serve_once(answer)) is ok


def test_ping_of_a_closed_port_fails() -> None:
    assert catalog.ping("redis", localports.free_port(), timeout=0.5) is False


@pytest.fixture
def worker(tmp_path: Path) -> TestEnv:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
        "current-context: x\n"
    )
    env = TestEnv(Handoff(str(kubeconfig), "default", "run-1", "r1", str(tmp_path / "run"), "local", 5), 2)
    services = (
        ServiceStatus(
            "redis",
            "redis",
            True,
            "redis.ns.svc",
            (PortStatus("redis", 6379, 21006),),
            "redis://localhost:21006",
        ),
        ServiceStatus(
            "events", "kafka", True, "events.ns.svc", (PortStatus("kafka", 9094, 21007),), "localhost:21007"
        ),
        ServiceStatus(
            "aws",
            "localstack",
            True,
            "aws.ns.svc",
            (PortStatus("edge", 4566, 21008),),
            "http://localhost:21008",
        ),
    )
    env.status = WorkerStatus(2, "te-default-run-1-abcdef-w2", Phase.READY, services)
    return env


def test_connection_details_and_variables(worker: TestEnv) -> None:
    assert worker.url("redis") == "redis://localhost:21006"
    assert worker.host_port("events") == ("localhost", 21007)
    variables = worker.environment()
    assert variables["REDIS_URL"] == "redis://localhost:21006"
    assert variables["KAFKA_BOOTSTRAP_SERVERS"] == "localhost:21007"
    assert variables["EVENTS_PORT"] == "21007"
    assert variables["AWS_ENDPOINT_URL"] == "http://localhost:21008"
    assert variables["TESTENV_WORKER"] == "2"
    with pytest.raises(KeyError, match="no service 'postgres'"):
        worker.url("postgres")


def test_a_bad_port_name_lists_the_ports_there_are(worker: TestEnv) -> None:
    assert worker.host_port("redis", "redis") == ("localhost", 21006)
    with pytest.raises(KeyError, match=r"service 'redis' has no port 'typo' \(its ports: redis\)"):
        worker.host_port("redis", "typo")
    with pytest.raises(KeyError, match=r"no service 'typo' \(services: redis, events, aws\)"):
        worker.host_port("typo")


def test_topics_are_namespaced_per_run_and_worker(worker: TestEnv) -> None:
    assert worker.topic("orders") == "r1-w2.orders"
    assert worker.topic("camera/fire", sep="/") == "r1-w2/camera/fire"
    assert worker.strip("r1-w2.orders") == "orders"  # noqa: B005 (TestEnv.strip, not str.strip)
    with pytest.raises(ValueError, match="not a topic of this worker"):
        worker.strip("r1-w3.orders")  # noqa: B005


def test_unique_ids_never_repeat(worker: TestEnv) -> None:
    ids = {worker.unique_id("order") for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("order-r1-w2-") for i in ids)


def test_shared_cache_computes_once(worker: TestEnv) -> None:
    calls: list[int] = []

    def compute() -> dict[str, int]:
        calls.append(1)
        return {"answer": 42}

    assert worker.shared_cache("key/with odd:chars", compute) == {"answer": 42}
    assert worker.shared_cache("key/with odd:chars", compute) == {"answer": 42}
    assert calls == [1]


def test_tmp_path_is_per_worker(worker: TestEnv) -> None:
    assert worker.tmp_path.name == "w2"
    assert worker.tmp_path.is_dir()


def test_unsupported_local_service_type_says_what_to_do(tmp_path: Path) -> None:
    pod = PodSpec("ns", "gw-0", "custom", {}, (), {8080: 40000})
    with pytest.raises(RunnerError, match=r"cannot run a 'custom' service.*kind or existing cluster"):
        launch_for(pod, tmp_path)


def test_pod_spec_reads_type_env_and_ports() -> None:
    pod = {
        "metadata": {
            "namespace": "ns",
            "name": "redis-x",
            "annotations": {ANNOTATION_SERVICE_TYPE: "redis"},
        },
        "spec": {
            "containers": [
                {
                    "env": [{"name": "A", "value": "1"}, {"name": "S", "valueFrom": {}}],
                    "ports": [{"containerPort": 6379}],
                    "args": ["redis-server"],
                }
            ]
        },
    }
    spec = pod_spec(pod, lambda port: port + 30000)
    assert (spec.service_type, spec.env, spec.ports) == ("redis", {"A": "1"}, {6379: 36379})


def test_two_runs_never_plan_the_same_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", str(tmp_path))
    first = localports.reserve_block(12, "run-a", start=27000, stop=28000)
    second = localports.reserve_block(12, "run-b", start=27000, stop=28000)
    assert second >= first + 12, "the second run skips the block the first one holds"
    localports.release_block("run-a")
    assert localports.reserve_block(12, "run-c", start=27000, stop=28000) == first


def test_a_dead_runs_reservation_is_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", str(tmp_path))
    folder = tmp_path / "port-reservations"
    folder.mkdir()
    (folder / "gone.block").write_text("999999999 27000 100")  # no such process
    assert localports.reserve_block(4, "run-d", start=27000, stop=28000) == 27000
    assert not (folder / "gone.block").exists()


def test_busy_ports_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", str(tmp_path))
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        base = localports.reserve_block(3, "run-e", start=port - 1, stop=port + 100)
        assert base > port


def test_port_forward_authenticates_through_the_clients_refresh_path() -> None:
    from kubernetes import client

    from testenv_harness.tunnel.portforward import stream_headers

    cfg = client.Configuration(host="https://cluster.example")
    refreshed: list[int] = []

    def refresh(configuration: client.Configuration) -> None:  # what an exec plugin's hook does
        refreshed.append(1)
        configuration.api_key["authorization"] = f"Bearer fresh-{len(refreshed)}"

    cfg.api_key["authorization"] = "Bearer expired"  # what the kubeconfig loader set at start
    cfg.refresh_api_key_hook = refresh
    api = client.ApiClient(cfg)
    assert stream_headers(api, "/x", "p")["authorization"] == "Bearer fresh-1"
    assert stream_headers(api, "/x", "p")["authorization"] == "Bearer fresh-2", "refreshed each time"


def test_a_postgres_name_with_a_line_break_is_refused_before_anything_runs(tmp_path: Path) -> None:
    pod = PodSpec(
        "ns", "db-0", "postgres", {"POSTGRES_DB": "app\nDROP DATABASE postgres;"}, (), {5432: 40000}
    )
    with pytest.raises(RunnerError, match="POSTGRES_DB holds a control character"):
        launch_for(pod, tmp_path)
