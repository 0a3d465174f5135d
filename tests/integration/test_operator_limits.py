"""What one tenant can cost the others: per-namespace limits, refused specs, oversized objects.

An operator of its own with small per-namespace limits, so that reaching them takes a handful of
simulated workers (issue 13: high 2 and 3).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from testenv_api import GROUP, PLURAL, Phase
from testenv_harness.ground.waiting import wait_for
from testenv_harness.provision.clusters import Cluster
from testenv_harness.provision.operator_process import OperatorProcess

from . import environments as te

WORKERS_PER_NAMESPACE = 3


@pytest.fixture(scope="module", autouse=True)
def limited_operator(
    local_cluster: Cluster, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("limited-operator") / "operator.log"
    process = OperatorProcess(
        local_cluster.kubeconfig,
        log,
        **te.OPERATOR_SETTINGS,
        TESTENV_MAX_WORKERS=str(te.MAX_WORKERS_UNDER_TEST),
        TESTENV_MAX_WORKERS_PER_NAMESPACE=str(WORKERS_PER_NAMESPACE),
    ).start()
    yield process
    process.stop()


def test_a_namespace_holds_a_capped_number_of_workers_and_a_freed_place_is_taken_at_once(
    api: client.ApiClient, tenant: str
) -> None:
    te.create(api, tenant, te.manifest("first", workers=2))
    te.wait_phase(api, tenant, "first", Phase.READY)
    te.create(api, tenant, te.manifest("second", workers=2))
    refused = te.wait_phase(api, tenant, "second", Phase.FAILED)
    assert "TESTENV_MAX_WORKERS_PER_NAMESPACE" in refused["status"]["message"]
    assert "already ask for 2 workers" in refused["status"]["message"]

    # A refused environment waits for an event, not a timer (pacing.REFUSED_SECONDS is 300 s):
    # its own spec change brings it in at once ...
    te.patch_spec(api, tenant, "second", {"workers": 1})
    te.wait_phase(api, tenant, "second", Phase.READY, timeout=30)
    # ... and so does an older environment leaving.
    te.create(api, tenant, te.manifest("third", workers=2))
    te.wait_phase(api, tenant, "third", Phase.FAILED)
    te.delete(api, tenant, "first")
    te.wait_phase(api, tenant, "third", Phase.READY, timeout=30)


def _requests_on_testenvironments(api: client.ApiClient) -> dict[str, float]:
    """apiserver_request_total for TestEnvironments by verb, from the API server's /metrics."""
    method, url, headers, _, _ = api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
    text = api.call_api(method, url, header_params=headers).read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{") and f'group="{GROUP}"' in line:
            labels, value = line.rsplit(" ", 1)
            found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            if found.get("resource") == PLURAL:
                verb = f"{found.get('verb')} {found.get('subresource', '')}".strip()
                totals[verb] = totals.get(verb, 0.0) + float(value)
    return totals


def test_refused_environments_cost_the_api_server_nothing_while_they_wait(
    api: client.ApiClient, tenant: str
) -> None:
    """Issue 13's flood: every refused environment used to LIST its namespace's TestEnvironments
    every second. Now they sit idle: no request about TestEnvironments at all in a quiet window."""
    names = [f"over-{i}" for i in range(5)]
    for name in names:
        te.create(api, tenant, te.manifest(name, workers=te.MAX_WORKERS_UNDER_TEST + 1))
    for name in names:
        te.wait_phase(api, tenant, name, Phase.FAILED)
    time.sleep(2)  # the last status writes and their events settle
    te.settled_count(api)  # and no earlier test's environment is being deleted in the window
    before = _requests_on_testenvironments(api)
    time.sleep(6)
    after = _requests_on_testenvironments(api)
    made = {verb: after[verb] - before.get(verb, 0.0) for verb in after if after[verb] != before.get(verb)}
    # The old behaviour made 5 environments x 6 s = 30 LISTs. The counters are cluster-wide, so a
    # watch renewal or another namespace's clean-up may fall into the window (a CI run once saw
    # one LIST, one WATCH and one DELETE): a few requests, never one per environment and second.
    assert made.get("LIST", 0.0) <= 2, made
    assert sum(made.values()) <= 4, made


def test_a_spec_at_the_size_limit_with_large_annotations_is_handled_and_deleted(
    api: client.ApiClient, tenant: str
) -> None:
    """kopf kept the whole object in an annotation; past 256 KiB every patch failed with 422 and
    the object could never be deleted. Now it keeps a digest, whatever the object's size."""
    name = f"large-{uuid.uuid4().hex[:4]}"
    body = te.manifest(name, workers=1)
    body["spec"]["services"][0]["env"] = [{"name": f"V{i}", "value": "x" * 4000} for i in range(8)]
    body["metadata"]["annotations"] = {"example.com/notes": "n" * 200_000}
    uid = te.create(api, tenant, body)["metadata"]["uid"]
    te.wait_phase(api, tenant, name, Phase.READY)
    key = f"{GROUP}/last-handled-configuration"
    kept = wait_for(
        lambda: (te.get(api, tenant, name)["metadata"].get("annotations") or {}).get(key),
        timeout=30,
        what=f"kopf to record the handled spec in {key}",
    )
    assert len(kept) < 200, kept

    te.delete(api, tenant, name, timeout=60)
    assert te.owned_namespaces(api, uid) == []
