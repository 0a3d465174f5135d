from __future__ import annotations

from testenv_api import LABEL_OWNER_UID, LABEL_WORKER
from testenv_operator.manifests import Owner, Quota, guards, namespace, referenced_secrets

OWNER = Owner("team", "env", "uid-1")


def test_namespace_carries_ownership_worker_and_pod_security_labels() -> None:
    labels = namespace(OWNER, "te-x-w3", 3)["metadata"]["labels"]
    assert labels[LABEL_OWNER_UID] == "uid-1"
    assert labels[LABEL_WORKER] == "3"
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"


def test_guards_fence_the_namespace() -> None:
    quota, limits, policy = guards(OWNER, "ns", 0, 3, Quota("4", "8Gi"))
    assert quota["spec"]["hard"]["limits.cpu"] == "4"
    assert quota["spec"]["hard"]["pods"] == "8"
    assert limits["spec"]["limits"][0]["type"] == "Container"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {}}]}], "only pods of the same namespace"


def test_referenced_secrets_from_env_and_localstack_token() -> None:
    services = [
        {
            "name": "a",
            "type": "redis",
            "env": [
                {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "k"}}},
                {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "j"}}},
            ],
        },
        {"name": "b", "type": "localstack", "localstack": {"authTokenSecretRef": {"name": "ls", "key": "t"}}},
    ]
    assert referenced_secrets(services) == {"ls": ["t"], "s1": ["j", "k"]}
