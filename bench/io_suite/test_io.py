"""60 tests that mostly wait: each talks to its worker's Redis, Kafka and S3, then waits for "the
system under test" (a sleep) so that it takes about `TEST_SECONDS` in all.

The clients are made once per worker, as a real suite would; each test's own I/O is a Redis
SET/GET, a Kafka produce and the consume of that very message, and an S3 put/get.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import redis
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from testenv_harness import TestEnv

TESTS = 60
TEST_SECONDS = 1.0
BUCKET = "io-bench"


@pytest.fixture(scope="session")
def cache(testenv: TestEnv) -> redis.Redis:
    return redis.Redis.from_url(testenv.url("redis"))


@pytest.fixture(scope="session")
def producer(testenv: TestEnv) -> Producer:
    return Producer({"bootstrap.servers": testenv.url("kafka"), "linger.ms": 0})


@pytest.fixture(scope="session")
def consumer(testenv: TestEnv) -> Iterator[Consumer]:
    consumer = Consumer(
        {
            "bootstrap.servers": testenv.url("kafka"),
            "group.id": testenv.unique_id("io"),
            "enable.auto.commit": False,
        }
    )
    yield consumer
    consumer.close()


@pytest.fixture(scope="session")
def s3(testenv: TestEnv) -> Any:
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket=BUCKET)
    return client


def _produce(producer: Producer, topic: str, value: bytes) -> int:
    """Sends one message and returns its offset (partition 0)."""
    delivered: list[Message] = []
    producer.produce(topic, value=value, on_delivery=lambda err, msg: delivered.append(msg))
    assert producer.flush(30) == 0
    (message,) = delivered
    assert message.error() is None, message.error()
    offset = message.offset()
    assert offset is not None
    return offset


def _consume(consumer: Consumer, topic: str, offset: int) -> bytes:
    consumer.assign([TopicPartition(topic, 0, offset)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None:
            continue
        error = message.error()
        if error is not None and error.code() != KafkaError._PARTITION_EOF:
            raise AssertionError(f"consuming {topic}@{offset}: {error}")
        if error is None and message.offset() == offset:
            return bytes(message.value() or b"")
    raise AssertionError(f"{topic}@{offset} did not arrive within 30 s")


@pytest.mark.parametrize("case", range(TESTS))
def test_io(
    case: int, testenv: TestEnv, cache: redis.Redis, producer: Producer, consumer: Consumer, s3: Any
) -> None:
    began = time.monotonic()
    value = f"case {case} on worker {testenv.worker}".encode()
    cache.set(f"case:{case}", value)
    assert cache.get(f"case:{case}") == value
    topic = testenv.topic("io")
    assert _consume(consumer, topic, _produce(producer, topic, value)) == value
    s3.put_object(Bucket=BUCKET, Key=f"case-{case}", Body=value)
    assert s3.get_object(Bucket=BUCKET, Key=f"case-{case}")["Body"].read() == value
    time.sleep(max(0.0, TEST_SECONDS - (time.monotonic() - began)))  # the system under test
