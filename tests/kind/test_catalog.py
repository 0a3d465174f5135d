"""Every built-in service type on real pods: Ready through its own readiness probe, answering its
protocol through the harness's port-forward, and restarted for real by `testenv.restart()`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from testenv_harness.provision import imagebuild
from testenv_harness.provision.clusters.kind import KindProvider
from tests.suites import Run

MANIFEST = {
    "apiVersion": "testenv.dev/v1alpha1",
    "kind": "TestEnvironment",
    "metadata": {"name": "catalog"},
    "spec": {
        "services": [
            {"name": "redis", "type": "redis"},
            {"name": "kafka", "type": "kafka"},
            {"name": "aws", "type": "localstack", "localstack": {"services": ["s3", "sqs"]}},
            {"name": "moto", "type": "moto"},
            {"name": "pg", "type": "postgres"},
            {"name": "mq", "type": "rabbitmq"},
            {"name": "mqtt", "type": "mosquitto"},
        ]
    },
}

TESTS = '''
import os, subprocess, struct, socket, uuid
import boto3, redis
from confluent_kafka import Consumer, Producer
from kubernetes import client
from testenv_harness.services import catalog
from testenv_api import KAFKA_INTERNAL_PORT, LABEL_SERVICE
from testenv_harness.ground.waiting import wait_for


def _pods(testenv, service):
    pods = testenv.core.list_namespaced_pod(testenv.namespace, label_selector=f"{LABEL_SERVICE}={service}")
    # A pod being deleted can still say Running for its grace period: it is the old one.
    live = [p for p in pods.items if not p.metadata.deletion_timestamp]
    return {p.metadata.uid for p in live if p.status.phase == "Running"}


def test_redis_answers_and_restarts_into_a_new_pod(testenv):
    r = redis.Redis.from_url(testenv.url("redis"))
    r.set("before", "1")
    before = _pods(testenv, "redis")
    testenv.restart("redis")
    after = _pods(testenv, "redis")
    assert after and not (after & before), "restart must replace the pod"
    fresh = redis.Redis.from_url(testenv.url("redis"))
    assert fresh.ping() and fresh.get("before") is None  # a new redis-server, no persistence


def test_kafka_from_outside_the_cluster_through_the_planned_port(testenv):
    topic = testenv.topic("orders")
    producer = Producer({"bootstrap.servers": testenv.url("kafka")})
    producer.produce(topic, value=b"hello")
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": testenv.url("kafka"), "group.id": "g",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])

    def received():
        message = consumer.poll(1.0)
        return message.value() if message is not None and not message.error() else None

    try:
        value = wait_for(received, timeout=30, what=f"the message on {topic}", interval=0)
    finally:
        consumer.close()
    assert value == b"hello"


IN_CLUSTER = r"""
import socket, struct, sys, time
host, port = sys.argv[1], int(sys.argv[2])
# The node's NetworkPolicy engine admits a new pod once it has programmed the pod's IP (well
# under a second); a connection in that moment is refused, so the first one is retried.
deadline = time.monotonic() + 15
while True:
    try:
        sock = socket.create_connection((host, port), timeout=10)
        break
    except ConnectionRefusedError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
# Metadata v0 for all topics: the broker list carries the INTERNAL listener it advertises.
sock.sendall(struct.pack(">ihhihi", 14, 3, 0, 42, -1, 0))
size = struct.unpack(">i", sock.recv(4))[0]
body = b""
while len(body) < size:
    body += sock.recv(size - len(body))
correlation, brokers = struct.unpack(">ii", body[:8])
node, length = struct.unpack(">ih", body[8:14])
host = body[14:14 + length].decode()
port = struct.unpack(">i", body[14 + length:18 + length])[0]
print(correlation, brokers, host, port)
"""


def test_kafka_from_inside_the_cluster_through_the_internal_listener(testenv):
    name = f"client-{uuid.uuid4().hex[:6]}"
    pod = {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "client", "image": os.environ["CLIENT_IMAGE"],
                "command": [
                    "python3", "-c", IN_CLUSTER, f"kafka.{testenv.namespace}.svc", str(KAFKA_INTERNAL_PORT)
                ],
            }],
        },
    }
    testenv.core.create_namespaced_pod(testenv.namespace, pod)

    def finished():
        phase = testenv.core.read_namespaced_pod(name, testenv.namespace).status.phase
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_for(finished, timeout=120, what=f"pod {name} to finish", interval=1)
    log = testenv.core.read_namespaced_pod_log(name, testenv.namespace)
    assert phase == "Succeeded", log
    assert log.split() == ["42", "1", f"kafka.{testenv.namespace}.svc", str(KAFKA_INTERNAL_PORT)]


def test_localstack_s3_and_sqs(testenv):
    aws = testenv.url("aws")
    s3 = boto3.client("s3", endpoint_url=aws)
    s3.create_bucket(Bucket="catalog-bucket")
    s3.put_object(Bucket="catalog-bucket", Key="k", Body=b"v")
    assert s3.get_object(Bucket="catalog-bucket", Key="k")["Body"].read() == b"v"
    sqs = boto3.client("sqs", endpoint_url=aws)
    queue = sqs.create_queue(QueueName="q")["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="m")
    messages = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=5)["Messages"]
    assert [m["Body"] for m in messages] == ["m"]


def test_moto_s3(testenv):
    s3 = boto3.client("s3", endpoint_url=testenv.url("moto"))
    s3.create_bucket(Bucket="moto-bucket")
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["moto-bucket"]


def test_postgres_login_and_query(testenv):
    out = subprocess.run(["psql", testenv.url("pg"), "-tAc", "select 40 + 2"], capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.strip() == "42", out.stderr


def test_rabbitmq_and_mosquitto_answer_their_protocols(testenv):
    assert catalog.ping("rabbitmq", testenv.host_port("mq")[1], timeout=10)
    assert catalog.ping("mosquitto", testenv.host_port("mqtt")[1], timeout=10)
'''


def test_every_service_type_is_ready_answers_and_restarts_on_kind(
    run_suite: Run, pytester: pytest.Pytester, kind_provider: KindProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    client_image = imagebuild.reference("python")
    kind_provider.load_images([client_image])
    monkeypatch.setenv("CLIENT_IMAGE", client_image)
    Path(pytester.path / "testenvironment.yaml").write_text(yaml.safe_dump(MANIFEST))
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_manifest = testenvironment.yaml\n")
    pytester.makepyfile(test_catalog=textwrap.dedent(TESTS))
    result = run_suite("-n", "0", "-v")
    result.assert_outcomes(passed=7)
    # Each service's time from pod creation to Ready, as the kubelet's readiness probes saw it.
    result.stdout.fnmatch_lines(
        ["*worker 0 ready in *s (aws *s, kafka *s, moto *s, mq *s, mqtt *s, pg *s, redis *s)*"]
    )
