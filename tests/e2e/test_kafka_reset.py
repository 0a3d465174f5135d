"""The reset a reused environment's Kafka gets (kafka_wire.reset), against a real broker."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from testenv_api import KAFKA_EXTERNAL_PORT, KAFKA_INTERNAL_PORT, kafka_environment
from testenv_harness.dataplane.runners import PodSpec, launch_for
from testenv_harness.ground import children
from testenv_harness.ground.localports import free_port
from testenv_harness.services import catalog
from testenv_harness.services.kafka import wire as kafka_wire


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    """A broker as the local data plane starts one; its client port."""
    port = free_port()
    pod = PodSpec(
        "t",
        "kafka",
        "kafka",
        kafka_environment("t", "kafka", port),
        (),
        {
            KAFKA_EXTERNAL_PORT: port,
            KAFKA_INTERNAL_PORT: free_port(),
        },
    )
    launch = launch_for(pod, tmp_path)
    if launch.prepare:
        launch.prepare()
    with (tmp_path / "broker.log").open("wb") as log:
        process = subprocess.Popen(launch.argv, env=launch.env, cwd=tmp_path, stdout=log, stderr=log)
    try:
        catalog.wait_answering("kafka", port, timeout=120)
        yield port
    finally:
        children.stop(process, grace=5)


def _leave_data(port: int, name: str) -> None:
    bootstrap = f"localhost:{port}"
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(name, value=b"x")
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": name, "auto.offset.reset": "earliest"})
    consumer.subscribe([name])
    try:
        while (message := consumer.poll(1.0)) is None or message.error():
            pass
        consumer.commit(message=message, asynchronous=False)
    finally:
        consumer.close()


def test_a_reset_leaves_no_topic_and_no_consumer_group(broker: int) -> None:
    for name in ("orders", "payments"):
        _leave_data(broker, name)
    admin = AdminClient({"bootstrap.servers": f"localhost:{broker}"})
    assert {"orders", "payments"} <= set(kafka_wire.user_topics(broker))
    kafka_wire.reset(broker)
    assert kafka_wire.user_topics(broker) == []
    assert admin.list_consumer_groups().result(timeout=10).valid == []
    _leave_data(broker, "orders")  # the same names serve the next run at once


def test_a_group_with_a_live_member_is_refused_not_dropped(broker: int) -> None:
    _leave_data(broker, "busy")
    member = Consumer({"bootstrap.servers": f"localhost:{broker}", "group.id": "busy"})
    member.subscribe(["busy"])
    try:
        for _ in range(30):  # until it has joined the group
            member.poll(0.5)
            if member.assignment():
                break
        with pytest.raises(kafka_wire.ResetError, match="busy"):
            kafka_wire.reset(broker)
    finally:
        member.close()
