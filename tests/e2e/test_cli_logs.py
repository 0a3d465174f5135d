"""`testenv logs SERVICE --worker I` on a run the CLI holds: the pods' state and what the service
wrote (here the local data plane's host process), bounded by --tail and --since."""

from __future__ import annotations

import shlex
import subprocess
import sys
import uuid

from tests.suites import TESTENV

#: What the run's command does: make its Redis log every connection, connect, then ask.
COMMAND = f"""
{shlex.quote(sys.executable)} -c 'import os, redis
client = redis.Redis.from_url(os.environ["REDIS_URL_1"])
client.config_set("loglevel", "verbose")
redis.Redis.from_url(os.environ["REDIS_URL_1"]).ping()'
sleep 1
echo "== since"; testenv logs redis --worker 1 --since 2m
echo "== tail"; testenv logs redis --worker 1 --tail 1
echo "== unknown"; testenv logs nats --worker 1 || echo "exit $?"
echo "== range"; testenv logs redis --worker 2 || echo "exit $?"
"""


def _part(out: str, name: str) -> str:
    return out.split(f"== {name}\n", 1)[1].split("\n== ", 1)[0]


def test_testenv_logs_prints_a_workers_service_state_and_what_it_wrote(where: list[str]) -> None:
    name = f"logs-{uuid.uuid4().hex[:6]}"
    result = subprocess.run(
        [
            *TESTENV,
            "run",
            "--service",
            "redis",
            "--workers",
            "2",
            "--run",
            name,
            *where,
            "--",
            "sh",
            "-c",
            COMMAND,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout

    since = _part(out, "since").splitlines()
    assert since[0].startswith(f"worker 1 of run {name!r}, namespace ")
    assert since[0].endswith("-w1:")
    assert since[1].startswith("redis  pod redis-")
    assert ": ready, 0 restarts, host process " in since[1]
    assert since[1].endswith(" running")
    text = "\n".join(since)
    assert "written since " in text
    assert "Ready to accept connections" in text, "the pod started within the last 2 minutes: all of it"
    assert "Accepted 127.0.0.1:" in text

    tail = _part(out, "tail").splitlines()
    assert tail[2].startswith("redis: the last 1 of ")
    assert len(tail) == 4, tail

    unknown = _part(out, "unknown")
    assert "exit 1" in unknown
    assert f"worker 1 of run {name!r} has no pod of service 'nats' (its services: redis)" in result.stderr
    assert "exit 1" in _part(out, "range")
    assert f"run {name!r} has workers 0-1 (numbered from 0), not 2" in result.stderr
