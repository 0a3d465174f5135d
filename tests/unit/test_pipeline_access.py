"""A run under a pipeline's identity: who it is, how it reaches its workers from inside the
cluster, and which cluster it picks when it has no kubeconfig (no API server involved here)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from testenv_api import Phase
from testenv_api.status import PortStatus, ServiceStatus, WorkerStatus
from testenv_harness.ground import kube
from testenv_harness.provision.clusters.existing import ExistingProvider
from testenv_harness.worker.handoff import DIRECT, Handoff
from testenv_harness.worker.testenv import TestEnv

NAMESPACE = "te-ci-run-1a2b3c-w0"
KUBECONFIG = (
    "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
    "users: [{name: u, user: {token: t}}]\n"
    "contexts: [{name: x, context: {cluster: c, user: u, namespace: ci-payments}}, "
    "{name: y, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
)


@pytest.mark.parametrize(
    ("username", "subject"),
    [
        (
            "system:serviceaccount:ci-x:pipeline",
            {"kind": "ServiceAccount", "namespace": "ci-x", "name": "pipeline"},
        ),
        ("jane@example.com", {"kind": "User", "name": "jane@example.com"}),
        # The CRD refuses system: names; such users (the cluster's admin) need no grant.
        ("system:admin", None),
        ("system:node:worker-1", None),
        ("", None),
    ],
)
def test_an_identity_becomes_the_access_subject_the_crd_accepts(
    username: str, subject: dict[str, str] | None
) -> None:
    assert kube.Identity(username).subject() == subject


def test_an_identity_is_named_as_a_person_reads_it() -> None:
    assert str(kube.Identity("system:serviceaccount:ci-x:pipeline")) == "ServiceAccount ci-x/pipeline"
    assert str(kube.Identity("jane")) == "user 'jane'"


def _service(name: str, kind: str, port: str, number: int, local: int, url: str) -> ServiceStatus:
    return ServiceStatus(name, kind, True, f"{name}.{NAMESPACE}.svc", (PortStatus(port, number, local),), url)


SERVICES = (
    _service("cache", "redis", "redis", 6379, 21000, "redis://localhost:21000"),
    # Kafka's forwarded port is EXTERNAL (9094); inside the cluster clients bootstrap on INTERNAL.
    _service("events", "kafka", "kafka", 9094, 21001, "localhost:21001"),
    _service("db", "postgres", "postgres", 5432, 21002, "postgresql://test:test@localhost:21002/test"),
    _service("aws", "moto", "http", 5000, 21003, "http://localhost:21003"),
)


def test_in_cluster_urls_name_the_service_and_its_own_port() -> None:
    urls = {s.name: s.cluster_url for s in SERVICES}
    assert urls == {
        "cache": f"redis://cache.{NAMESPACE}.svc:6379",
        "events": f"events.{NAMESPACE}.svc:9092",
        "db": f"postgresql://test:test@db.{NAMESPACE}.svc:5432/test",
        "aws": f"http://aws.{NAMESPACE}.svc:5000",
    }


@pytest.fixture
def direct(tmp_path: Path) -> TestEnv:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    handoff = Handoff(
        str(kubeconfig), "ci", "run-1a2b3c", "1a2b3c", str(tmp_path / "run"), "existing", 5, connect=DIRECT
    )
    env = TestEnv(handoff, 0)
    env.status = WorkerStatus(0, NAMESPACE, Phase.READY, SERVICES)
    return env


def test_a_direct_worker_exports_the_services_dns_names(direct: TestEnv) -> None:
    variables = direct.environment()
    assert variables["REDIS_URL"] == f"redis://cache.{NAMESPACE}.svc:6379"
    assert variables["KAFKA_BOOTSTRAP_SERVERS"] == f"events.{NAMESPACE}.svc:9092"
    assert variables["EVENTS_HOST"] == f"events.{NAMESPACE}.svc"
    assert variables["EVENTS_PORT"] == "9092"
    assert variables["DATABASE_URL"] == f"postgresql://test:test@db.{NAMESPACE}.svc:5432/test"
    assert variables["AWS_ENDPOINT_URL"] == f"http://aws.{NAMESPACE}.svc:5000"
    assert direct.host_port("cache") == (f"cache.{NAMESPACE}.svc", 6379)
    assert direct.host_port("cache", "redis") == (f"cache.{NAMESPACE}.svc", 6379)
    assert direct.endpoint("events") == (f"events.{NAMESPACE}.svc", 9092)


def test_a_forwarding_worker_keeps_its_local_ports(direct: TestEnv) -> None:
    forwarding = TestEnv(dataclasses.replace(direct.handoff, connect="forward"), 0)
    forwarding.status = direct.status
    assert forwarding.environment()["REDIS_URL"] == "redis://localhost:21000"
    assert forwarding.endpoint("events") == ("127.0.0.1", 21001)


def test_an_old_handoff_without_the_new_fields_still_loads() -> None:
    text = '{"kubeconfig": "/k", "namespace": "n", "name": "e", "run_id": "r", "run_dir": "/d", '
    text += '"provider": "kind", "timeout": 5}'
    handoff = Handoff.from_json(text)
    assert (handoff.connect, handoff.context, handoff.kubeconfig_path) == ("forward", "", Path("/k"))


def test_existing_takes_the_namespace_of_the_kubeconfigs_context(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    assert ExistingProvider(str(kubeconfig)).default_namespace() == "ci-payments"
    assert ExistingProvider(str(kubeconfig), context="y").default_namespace() == "default"


def test_existing_without_a_kubeconfig_uses_the_pods_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("t")
    (account / "namespace").write_text("ci-runners\n")
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT_DIR", account)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    provider = ExistingProvider()
    assert provider.in_cluster
    assert provider.default_namespace() == "ci-runners"
    cluster = provider.up()
    assert cluster.kubeconfig is None
    # A kubeconfig named explicitly always wins, even inside a pod.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    assert not ExistingProvider(str(kubeconfig)).in_cluster


def test_outside_a_pod_and_without_a_kubeconfig_the_error_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(Exception, match="set KUBECONFIG"):
        ExistingProvider().up()
