"""Each worker has its own Redis: the same key never collides, and a restart or a slow network
hurts nobody else."""

from __future__ import annotations

import os
import time

import pytest
import redis

from testenv_harness import TestEnv


def test_redis_url_is_exported_for_the_code_under_test(testenv: TestEnv) -> None:
    assert os.environ["REDIS_URL"] == testenv.url("redis")


def test_the_same_key_belongs_to_this_worker_alone(testenv: TestEnv) -> None:
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.set("owner", testenv.worker)
    time.sleep(0.2)  # with a shared Redis another worker would overwrite it meanwhile
    assert int(client.get("owner") or -1) == testenv.worker


def test_counters_start_from_zero_in_every_worker(testenv: TestEnv) -> None:
    client = redis.Redis.from_url(testenv.url("redis"))
    key = testenv.unique_id("counter")
    assert [client.incr(key) for _ in range(3)] == [1, 2, 3]


def test_restarting_my_redis_loses_my_data_only(testenv: TestEnv) -> None:
    client = redis.Redis.from_url(testenv.url("redis"))
    client.set("before-restart", "x")
    testenv.restart("redis")
    client = redis.Redis.from_url(testenv.url("redis"))
    assert client.get("before-restart") is None, "a restarted Redis starts empty"
    assert client.ping()


def test_reset_flushes(testenv: TestEnv) -> None:
    client = redis.Redis.from_url(testenv.url("redis"))
    client.set("k", "v")
    testenv.reset("redis")
    assert client.dbsize() == 0


def test_a_slow_network_to_my_redis_slows_me_only(testenv: TestEnv) -> None:
    if testenv.direct:
        pytest.skip("faults act on the worker's forward; this run connects directly")
    client = redis.Redis.from_url(testenv.url("redis"))
    with testenv.fault("redis", "latency", latency=200):  # Toxiproxy's toxics, on this worker alone
        assert _ping_seconds(client) >= 0.2
    # The fault ends with its block. (The fastest of three pings: on a busy machine one ping alone
    # may take that long without any fault.)
    assert min(_ping_seconds(client) for _ in range(3)) < 0.2, "the fault ended with its block"


def _ping_seconds(client: redis.Redis) -> float:
    started = time.monotonic()
    client.ping()
    return time.monotonic() - started
