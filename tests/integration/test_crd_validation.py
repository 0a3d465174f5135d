"""The real API server accepts good TestEnvironments and refuses bad ones, naming the field."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

import testenv_api
from testenv_harness.provision import toolchain
from testenv_harness.provision.clusters import Cluster

pytestmark = pytest.mark.usefixtures("crd")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

Manifest = dict[str, Any]


def _base() -> Manifest:
    return {
        "apiVersion": f"{testenv_api.GROUP}/{testenv_api.VERSION}",
        "kind": testenv_api.KIND,
        "metadata": {"name": "candidate"},
        "spec": {"workers": 2, "services": [{"name": "redis", "type": "redis"}]},
    }


def _create(api: client.ApiClient, namespace: str, body: Manifest, dry_run: bool = True) -> Manifest:
    objects = client.CustomObjectsApi(api)
    kwargs = {"dry_run": "All"} if dry_run else {}
    result: Manifest = objects.create_namespaced_custom_object(
        testenv_api.GROUP,
        testenv_api.VERSION,
        namespace,
        testenv_api.PLURAL,
        body,
        field_validation="Strict",
        **kwargs,
    )
    return result


def _custom(**custom: Any) -> dict[str, Any]:
    return {"name": "api", "type": "custom", "custom": custom}


def _env(count: int, length: int) -> list[dict[str, str]]:
    """`count` variables of `length` characters each, named V0, V1, ..."""
    return [{"name": f"V{i}", "value": "x" * length} for i in range(count)]


VALID: dict[str, Callable[[Manifest], None]] = {
    "minimal": lambda m: None,
    "every built-in type": lambda m: m["spec"].update(
        services=[{"name": t, "type": t} for t in testenv_api.SERVICE_TYPES if t != "custom"]
    ),
    "custom with readiness": lambda m: m["spec"]["services"].append(
        _custom(
            image="ghcr.io/acme/api:1.4.2",
            args=["--port", "8080"],
            ports=[{"name": "http", "port": 8080}, {"name": "admin", "port": 9090}],
            readiness={"httpGet": {"path": "/healthz", "port": 8080}},
        )
    ),
    "overrides": lambda m: m["spec"]["services"][0].update(
        image="valkey/valkey:8.1",
        resources={"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": 1}},
        env=[
            {"name": "A", "value": "1"},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ],
    ),
    "localstack with token": lambda m: m["spec"]["services"].append(
        {
            "name": "aws",
            "type": "localstack",
            "localstack": {"services": ["s3", "sqs"], "authTokenSecretRef": {"name": "ls", "key": "token"}},
        }
    ),
    "access subjects": lambda m: m["spec"].update(
        access={"subjects": [{"kind": "ServiceAccount", "name": "ci"}, {"kind": "Group", "name": "team-a"}]}
    ),
    "max workers": lambda m: m["spec"].update(workers=testenv_api.MAX_WORKERS, portBase=1024),
    "lifetime": lambda m: m["spec"].update(lifetime={"ttlSeconds": 3600, "heartbeatTimeoutSeconds": 300}),
    "integer exponents": lambda m: m["spec"]["services"][0].update(
        resources={"requests": {"cpu": "1e-1", "memory": "1e8"}, "limits": {"memory": "2E8"}}
    ),
    "32 KiB of env and args, just": lambda m: m["spec"]["services"].extend(
        [
            {"name": "big", "type": "redis", "env": _env(7, 4000)},
            _custom(
                image="a:1", ports=[{"name": "p", "port": 80}], args=["y" * 1000] * 3, command=["z" * 700]
            ),
        ]
    ),
}


@pytest.mark.parametrize("mutate", VALID.values(), ids=VALID.keys())
def test_valid_spec_is_accepted(
    api: client.ApiClient, namespace: str, mutate: Callable[[Manifest], None]
) -> None:
    body = _base()
    mutate(body)
    _create(api, namespace, body)


def test_the_shipped_example_is_accepted(api: client.ApiClient, namespace: str) -> None:
    for path in EXAMPLES.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == testenv_api.KIND:
                doc["metadata"]["namespace"] = namespace
                _create(api, namespace, doc)


def _set(path: str, value: Any) -> Callable[[Manifest], None]:
    def mutate(m: Manifest) -> None:
        *parents, leaf = path.split(".")
        node: Any = m
        for key in parents:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        node[leaf] = value

    return mutate


def _delete(path: str) -> Callable[[Manifest], None]:
    def mutate(m: Manifest) -> None:
        *parents, leaf = path.split(".")
        node: Any = m
        for key in parents:
            node = node[key]
        del node[leaf]

    return mutate


def _add_service(service: dict[str, Any]) -> Callable[[Manifest], None]:
    return lambda m: m["spec"]["services"].append(service)


# (mutation, the field the error must name, words the message must contain)
INVALID: dict[str, tuple[Callable[[Manifest], None], str, str]] = {
    "zero workers": (_set("spec.workers", 0), "spec.workers", "greater than or equal to 1"),
    "too many workers": (
        _set("spec.workers", testenv_api.MAX_WORKERS + 1),
        "spec.workers",
        f"less than or equal to {testenv_api.MAX_WORKERS}",
    ),
    "no services": (_set("spec.services", []), "spec.services", "at least 1 items"),
    "services missing": (_delete("spec.services"), "spec.services", "Required value"),
    "duplicate names": (
        _add_service({"name": "redis", "type": "kafka"}),
        "spec.services[1]",
        "Duplicate value",
    ),
    "unknown type": (_set("spec.services.0.type", "memcached"), "spec.services[0].type", "Unsupported value"),
    "bad name": (_set("spec.services.0.name", "Redis_1"), "spec.services[0].name", "should match"),
    "custom without block": (
        _add_service({"name": "api", "type": "custom"}),
        "spec.services[1].custom",
        "needs custom.image",
    ),
    "custom without ports": (
        _add_service(_custom(image="acme/api:1")),
        "spec.services[1].custom",
        "custom.ports",
    ),
    "custom with image field": (
        _add_service({**_custom(image="a:1", ports=[{"name": "p", "port": 1}]), "image": "b"}),
        "spec.services[1].image",
        "set custom.image",
    ),
    "custom block on redis": (
        _set("spec.services.0.custom", {"image": "x:1"}),
        "spec.services[0].custom",
        "only allowed when type is custom",
    ),
    "localstack block on redis": (
        _set("spec.services.0.localstack", {"services": ["s3"]}),
        "spec.services[0].localstack",
        "only allowed when type is localstack",
    ),
    "two readiness checks": (
        _add_service(
            _custom(
                image="a:1",
                ports=[{"name": "p", "port": 80}],
                readiness={"tcpSocket": {"port": 80}, "exec": {"command": ["x"]}},
            )
        ),
        "spec.services[1].custom.readiness",
        "exactly one of tcpSocket, httpGet or exec",
    ),
    "port out of range": (
        _add_service(_custom(image="a:1", ports=[{"name": "p", "port": 70000}])),
        "spec.services[1].custom.ports[0].port",
        "less than or equal to 65535",
    ),
    "privileged port base": (_set("spec.portBase", 80), "spec.portBase", "greater than or equal to 1024"),
    "ports past 65535": (
        lambda m: m["spec"].update(workers=256, portBase=65400),
        "spec.portBase",
        "must not exceed 65535",
    ),
    "bad quantity": (
        _set("spec.services.0.resources", {"requests": {"cpu": "lots"}}),
        "spec.services[0].resources.requests.cpu",
        "should match",
    ),
    "env value and valueFrom": (
        _set(
            "spec.services.0.env",
            [{"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        ),
        "spec.services[0].env[0]",
        "exactly one of value or valueFrom",
    ),
    "ttl too short": (
        _set("spec.lifetime", {"ttlSeconds": 10}),
        "spec.lifetime.ttlSeconds",
        "greater than or equal to 60",
    ),
    "heartbeat beyond ttl": (
        _set("spec.lifetime", {"ttlSeconds": 600, "heartbeatTimeoutSeconds": 3600}),
        "spec.lifetime.heartbeatTimeoutSeconds",
        "must not exceed lifetime.ttlSeconds",
    ),
    "namespace on a User": (
        _set("spec.access", {"subjects": [{"kind": "User", "name": "u", "namespace": "x"}]}),
        "spec.access.subjects[0].namespace",
        "only meaningful for kind ServiceAccount",
    ),
    "misspelt field": (_set("spec.worker", 4), "spec.worker", "unknown field"),
    "a name over 63 characters": (
        _set("metadata.name", "e" * 64),
        "metadata.name",
        "may be 63 characters at most",
    ),
    "a GPU limit": (
        _set("spec.services.0.resources", {"limits": {"cpu": "1", "nvidia.com/gpu": 1}}),
        "spec.services[0].resources.limits",
        "only cpu and memory may be set",
    ),
    "ephemeral storage": (
        _set("spec.services.0.resources", {"requests": {"ephemeral-storage": "2Ti"}}),
        "spec.services[0].resources.requests",
        "only cpu and memory may be set",
    ),
    "fractional exponent": (
        _set("spec.services.0.resources", {"requests": {"cpu": "1e1.5"}}),
        "spec.services[0].resources.requests.cpu",
        "should match",
    ),
    "a system: group": (
        _set("spec.access", {"subjects": [{"kind": "Group", "name": "system:authenticated"}]}),
        "spec.access.subjects[0].name",
        "system: users and groups",
    ),
    "over 32 KiB of env values": (
        _set("spec.services.0.env", _env(9, 4000)),
        "spec.services",
        "32768 characters in total",
    ),
    "a megabyte of env values": (
        lambda m: m["spec"].update(
            services=[{"name": f"s{i}", "type": "redis", "env": _env(64, 4096)} for i in range(4)]
        ),
        "spec.services",
        "32768 characters in total",
    ),
    "over 32 KiB in custom args": (
        _add_service(_custom(image="a:1", ports=[{"name": "p", "port": 80}], args=["y" * 1024] * 33)),
        "spec.services",
        "32768 characters in total",
    ),
    "a system: user": (
        _set("spec.access", {"subjects": [{"kind": "User", "name": "system:serviceaccount:b:ci"}]}),
        "spec.access.subjects[0].name",
        "system: users and groups",
    ),
}


@pytest.mark.parametrize(("mutate", "field", "words"), INVALID.values(), ids=INVALID.keys())
def test_invalid_spec_is_refused_naming_the_field(
    api: client.ApiClient, namespace: str, mutate: Callable[[Manifest], None], field: str, words: str
) -> None:
    body = _base()
    mutate(body)
    with pytest.raises(ApiException) as refused:
        _create(api, namespace, body)
    assert refused.value.status in (400, 422), refused.value.body
    message = json.loads(refused.value.body)["message"]
    assert field in message, message
    assert words in message, message


def test_defaults_are_filled_in(api: client.ApiClient, namespace: str) -> None:
    body = copy.deepcopy(_base())
    del body["spec"]["workers"]
    created = _create(api, namespace, body, dry_run=False)
    assert created["spec"]["workers"] == 1
    assert created["spec"]["portBase"] == testenv_api.DEFAULT_PORT_BASE
    assert created["spec"]["lifetime"] == {"ttlSeconds": 21600}


def _kubectl(cluster: Cluster, *args: str) -> str:
    return subprocess.run(
        [
            str(toolchain.binary("kubectl")),
            "--kubeconfig",
            str(cluster.kubeconfig),
            f"--cache-dir={toolchain.kube_cache_dir()}",  # not ~/.kube/cache
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_kubectl_shows_columns_under_the_short_name(
    api: client.ApiClient, namespace: str, local_cluster: Cluster
) -> None:
    _create(api, namespace, _base(), dry_run=False)
    header = _kubectl(local_cluster, "get", "te", "-n", namespace).splitlines()[0].split()
    assert header == ["NAME", "WORKERS", "READY", "PHASE", "AGE"]


def test_kubectl_explain_documents_fields(local_cluster: Cluster) -> None:
    text = _kubectl(local_cluster, "explain", "testenvironment.spec.workers")
    assert "parallel test processes" in text
