"""Worker isolation enforced on real pods (issue 24): the NetworkPolicies the operator renders are
walls on our kind node (kube-router's firewall), not only objects.

Two workers, each with its own Redis. From a pod in worker A's namespace: its own Redis answers,
worker B's does not, and the API server is out of reach (egress leaves a worker for its own pods
and cluster DNS only). From the tenant's namespace: a pod labelled as a test runner reaches A's
Redis, any other pod does not.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from testenv_harness.provision import imagebuild
from testenv_harness.provision.clusters.kind import KindProvider
from tests.suites import Run

MANIFEST = {
    "apiVersion": "testenv.dev/v1alpha1",
    "kind": "TestEnvironment",
    "metadata": {"name": "isolation"},
    "spec": {"services": [{"name": "redis", "type": "redis"}]},
}

TESTS = r'''
import os, uuid
from testenv_api import LABEL_OWNER_NAMESPACE, LABEL_OWNER_UID, LABEL_RUNNER, LABEL_SERVICE
from testenv_harness.ground.waiting import wait_for

#: Each check prints `<name>=reached` or `<name>=blocked`. The client first gives the policy
#: engine a moment to program its new pod (kube-router takes well under a second).
SCRIPT = """
reach() {
  [ "$(timeout 4 redis-cli -h "$2" ping 2>/dev/null)" = PONG ] && echo "$1=reached" || echo "$1=blocked"
}
sleep 3
for target in $TARGETS; do reach "${target%%:*}" "${target#*:}"; done
if timeout 4 bash -c 'exec 3<>/dev/tcp/kubernetes.default.svc.cluster.local/443' 2>/dev/null; then
  echo api=reached; else echo api=blocked; fi
"""


def _other_worker(testenv):
    owner = testenv.core.read_namespace(testenv.namespace).metadata.labels[LABEL_OWNER_UID]

    def other():
        found = testenv.core.list_namespace(label_selector=f"{LABEL_OWNER_UID}={owner}").items
        return next((n.metadata.name for n in found if n.metadata.name != testenv.namespace), None)

    return wait_for(other, timeout=120, what="the other worker's namespace", interval=1)


def _redis_ready(testenv, namespace):
    def ready():
        pods = testenv.core.list_namespaced_pod(namespace, label_selector=f"{LABEL_SERVICE}=redis").items
        return any(
            c.type == "Ready" and c.status == "True"
            for p in pods if not p.metadata.deletion_timestamp
            for c in (p.status.conditions or [])
        )

    wait_for(ready, timeout=120, what=f"redis in {namespace} to be Ready", interval=1)


def _run(testenv, namespace, labels, targets):
    name = f"isolation-{uuid.uuid4().hex[:6]}"
    pod = {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "client", "image": os.environ["CLIENT_IMAGE"], "imagePullPolicy": "IfNotPresent",
                "command": ["bash", "-c", SCRIPT],
                "env": [{"name": "TARGETS", "value": " ".join(f"{k}:{v}" for k, v in targets.items())}],
            }],
        },
    }
    testenv.core.create_namespaced_pod(namespace, pod)

    def finished():
        phase = testenv.core.read_namespaced_pod(name, namespace).status.phase
        return phase if phase in ("Succeeded", "Failed") else None

    wait_for(finished, timeout=120, what=f"pod {namespace}/{name} to finish", interval=1)
    log = testenv.core.read_namespaced_pod_log(name, namespace)
    testenv.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    return dict(line.split("=", 1) for line in log.split() if "=" in line)


def test_a_worker_reaches_its_own_services_only(testenv):
    other = _other_worker(testenv)
    _redis_ready(testenv, testenv.namespace)
    _redis_ready(testenv, other)
    own_redis = f"redis.{testenv.namespace}.svc.cluster.local"
    targets = {"own": own_redis, "other": f"redis.{other}.svc.cluster.local"}
    seen = _run(testenv, testenv.namespace, {}, targets)
    assert seen == {"own": "reached", "other": "blocked", "api": "blocked"}

    tenant = testenv.core.read_namespace(testenv.namespace).metadata.labels[LABEL_OWNER_NAMESPACE]
    runner = _run(testenv, tenant, {LABEL_RUNNER: "true"}, {"worker": own_redis})
    stranger = _run(testenv, tenant, {}, {"worker": own_redis})
    assert runner["worker"] == "reached", "a test runner pod of the tenant must reach the worker"
    assert stranger["worker"] == "blocked", "any other pod of the tenant must not"
'''


def test_workers_are_isolated_by_enforced_network_policies(
    run_suite: Run, pytester: pytest.Pytester, kind_provider: KindProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert kind_provider.node_is_ours(), "this test checks the policy engine of our offline node image"
    said = kind_provider.isolation_file.read_text()
    assert "enforces NetworkPolicies" in said, said  # the provider's own probe, at create time
    monkeypatch.setenv("CLIENT_IMAGE", imagebuild.reference("redis"))  # embedded in the node
    Path(pytester.path / "testenvironment.yaml").write_text(yaml.safe_dump(MANIFEST))
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_manifest = testenvironment.yaml\n")
    pytester.makepyfile(test_isolation=textwrap.dedent(TESTS))
    result = run_suite("-n", "2", "-v")
    result.assert_outcomes(passed=1)
