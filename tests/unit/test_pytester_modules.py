"""The test suite's own hook (tests/conftest.py): a module first imported during a `pytester` test
stays imported after it, so the Kubernetes client's classes have one identity for the session."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

INNER = """
import pytest
import kubernetes.client as client


def test_first_use_under_pytester(pytester):
    client.CoreV1Api, client.V1Namespace  # the client loads both modules here


def test_a_later_call_takes_the_clients_own_model():
    api = client.CoreV1Api(client.ApiClient())
    api.api_client.configuration.host = "http://127.0.0.1:9"
    with pytest.raises(Exception) as refused:  # nothing listens there: a connection error
        api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="x")), _request_timeout=0.5)
    assert "validation error" not in str(refused.value)
"""


@pytest.mark.parametrize("hook", [True, False], ids=["with-the-hook", "without"])
def test_a_module_first_loaded_under_pytester_keeps_its_identity(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, hook: bool
) -> None:
    pytester.makepyfile(test_inner=textwrap.dedent(INNER))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    plugins = ["-p", "tests.conftest"] if hook else ["-p", "pytester"]
    result = pytester.runpytest_subprocess(*plugins, "-p", "no:cacheprovider")
    # Without the hook the second test fails: the check that this test can fail at all.
    result.assert_outcomes(passed=2) if hook else result.assert_outcomes(passed=1, failed=1)
