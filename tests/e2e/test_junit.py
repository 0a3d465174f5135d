"""JUnit XML says where each test ran: its worker namespace and its services' endpoints."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from tests.suites import Run


def test_each_junit_entry_names_its_worker_namespace_and_endpoints(
    run_suite: Run, example_suite: Path
) -> None:
    report = example_suite / "junit.xml"
    run_suite("-n", "2", f"--junitxml={report}").assert_outcomes(passed=11)
    cases = ET.parse(report).getroot().iter("testcase")
    namespaces = set()
    for case in cases:
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        worker = properties["testenv_worker"]
        assert properties["testenv_namespace"].endswith(f"-w{worker}"), properties
        assert properties["testenv_url_redis"].startswith("redis://localhost:"), properties
        assert properties["testenv_url_kafka"].startswith("localhost:"), properties
        namespaces.add(properties["testenv_namespace"])
    assert len(namespaces) == 2, "two workers, two namespaces"
