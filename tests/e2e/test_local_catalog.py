"""The local cluster serves the whole catalog but `custom`: PostgreSQL and RabbitMQ run as host
processes, one server per worker, honouring the images' variables, and a reset starts them empty."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from tests.suites import Run

from .test_harness import services_of

MANIFEST = {
    "apiVersion": "testenv.dev/v1alpha1",
    "kind": "TestEnvironment",
    "metadata": {"name": "catalog"},
    "spec": {
        "services": [
            {"name": "pg", "type": "postgres", "env": [{"name": "POSTGRES_DB", "value": "orders"}]},
            {
                "name": "mq",
                "type": "rabbitmq",
                "env": [
                    {"name": "RABBITMQ_DEFAULT_USER", "value": "alice"},
                    {"name": "RABBITMQ_DEFAULT_PASS", "value": "s3cret"},
                    {"name": "RABBITMQ_DEFAULT_VHOST", "value": "shop"},
                ],
            },
        ]
    },
}

TESTS = """
import os, subprocess, urllib.parse
import pika
from barrier import barrier


def psql(url, sql):
    done = subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-tAc", sql], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_each_worker_has_its_own_servers(testenv):
    me = str(testenv.worker)
    url = os.environ["DATABASE_URL"]
    assert urllib.parse.urlparse(url).path == "/orders"
    assert psql(url, "select current_database() || ' ' || current_user") == "orders testenv"
    psql(url, f"create table mine (worker text); insert into mine values ('{me}')")
    params = pika.URLParameters(os.environ["AMQP_URL"])
    params.credentials = pika.PlainCredentials("alice", "s3cret")
    params.virtual_host = "shop"
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.queue_declare("jobs")
    channel.basic_publish("", "jobs", me.encode())
    barrier(testenv, "written")
    # what the other worker wrote is in its own servers, not in these
    assert psql(url, "select string_agg(worker, ',') from mine") == me
    method, _, body = channel.basic_get("jobs", auto_ack=True)
    assert body == me.encode()
    assert channel.basic_get("jobs", auto_ack=True)[0] is None
    connection.close()
    barrier(testenv, "read")
    testenv.reset("pg")
    assert psql(os.environ["DATABASE_URL"], "select count(*) from pg_tables where tablename = 'mine'") == "0"
    testenv.reset("mq")
    connection = pika.BlockingConnection(params)
    assert connection.channel().queue_declare("jobs", passive=False).method.message_count == 0
    connection.close()
"""

BARRIER = """
from testenv_harness.ground.waiting import wait_for

def barrier(testenv, name, workers=2, timeout=120):
    folder = testenv.handoff.run_path / "barriers" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(testenv.worker)).touch()
    wait_for(lambda: len(list(folder.iterdir())) >= workers, timeout=timeout, what=f"workers at {name}")
"""

#: What our PostgreSQL and RabbitMQ servers run as (the unshare'd server, the Erlang VM, epmd).
MARKERS = ("/usr/lib/postgresql/", "rabbitmq-node", "beam.smp", "epmd -port")


def test_postgres_and_rabbitmq_run_per_worker_on_the_local_cluster(
    run_suite: Run, pytester: pytest.Pytester
) -> None:
    before = services_of(MARKERS)
    Path(pytester.path / "testenvironment.yaml").write_text(yaml.safe_dump(MANIFEST))
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_manifest = testenvironment.yaml\n")
    pytester.makepyfile(barrier=BARRIER, test_catalog=textwrap.dedent(TESTS))
    result = run_suite("-n", "2", "--dist", "each", "--testenv-wait-teardown")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*worker 0 ready in *s (mq *s, pg *s)*"])
    assert not services_of(MARKERS) - before, "a PostgreSQL or RabbitMQ process outlived the run"
