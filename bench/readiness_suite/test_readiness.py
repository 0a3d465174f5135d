"""bench/readiness_lag.py's suite: one test per worker, written to READINESS_OUT/worker-N.json:
for each service, when its pod's log first says it serves (the container runtime's timestamp
of that line) and when this worker took it as answering (its connection's span)."""

from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path

import pytest

from testenv_api import LABEL_SERVICE
from testenv_harness import TestEnv

#: A line each service writes once it serves.
SERVING = {
    "redis": re.compile(r"Ready to accept connections"),
    "kafka": re.compile(r"Kafka Server started"),
    "localstack": re.compile(r"\bReady\.\s*$"),
}


def _stamp(value: str) -> float:
    # RFC 3339 with nanoseconds: Python parses microseconds at most.
    whole, _, fraction = value.rstrip("Z").partition(".")
    parsed = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.UTC)
    return parsed.timestamp() + float(f"0.{fraction or '0'}")


@pytest.mark.parametrize("copy", range(int(os.environ.get("READINESS_TESTS", "2"))))
def test_report_when_each_service_served(testenv: TestEnv, copy: int) -> None:
    out = Path(os.environ["READINESS_OUT"]) / f"worker-{testenv.worker}.json"
    if out.exists():
        return  # another test of this worker wrote it
    report: dict[str, dict[str, float | None]] = {}
    answered = {
        name.split(" ", 1)[0]: end for name, _, end in testenv.spans if name.endswith("through its forward")
    }
    pods = {
        (pod.metadata.labels or {}).get(LABEL_SERVICE): pod
        for pod in testenv.core.list_namespaced_pod(testenv.namespace).items
    }
    for service in testenv.services():
        pattern, pod, logged = SERVING.get(service.type), pods.get(service.name), None
        if pattern is not None and pod is not None:
            text = testenv.core.read_namespaced_pod_log(
                pod.metadata.name, testenv.namespace, container=pod.spec.containers[0].name, timestamps=True
            )
            for line in text.splitlines():
                stamp, _, message = line.partition(" ")
                if pattern.search(message):
                    logged = _stamp(stamp)
                    break
        report[service.name] = {"served": logged, "seen": answered.get(service.name)}
    out.write_text(json.dumps(report))
    # Where the worker's own start-up went (its spans, wall clock), for a reader of the results.
    spans = [{"what": name, "start": start, "end": end} for name, start, end in testenv.spans]
    out.with_suffix(".spans.json").write_text(json.dumps(spans))
