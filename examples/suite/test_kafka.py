"""Each worker has its own Kafka broker, reached on its planned port; topics are namespaced too."""

from __future__ import annotations

import os

from confluent_kafka import Consumer, Producer

from testenv_harness import TestEnv


def test_produce_and_consume_on_my_broker(testenv: TestEnv) -> None:
    topic = testenv.topic("orders")
    producer = Producer({"bootstrap.servers": os.environ["KAFKA_BOOTSTRAP_SERVERS"]})
    producer.produce(topic, key=b"k", value=f"from worker {testenv.worker}".encode())
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": testenv.url("kafka"),
            "group.id": testenv.unique_id("group"),
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    try:
        message = None
        for _ in range(60):
            message = consumer.poll(1.0)
            if message is not None and not message.error():
                break
        assert message is not None
        assert message.value() == f"from worker {testenv.worker}".encode()
        assert testenv.strip(message.topic()) == "orders"
    finally:
        consumer.close()


def test_my_broker_holds_only_my_topics(testenv: TestEnv) -> None:
    producer = Producer({"bootstrap.servers": testenv.url("kafka")})
    producer.produce(testenv.topic("audit"), value=b"x")
    assert producer.flush(30) == 0
    topics = set(producer.list_topics(timeout=10).topics)
    mine = {t for t in topics if not t.startswith("__")}
    assert mine, "at least the topics this worker made"
    assert all(t.startswith(testenv.topic("")) for t in mine), f"another worker's topic leaked in: {mine}"
