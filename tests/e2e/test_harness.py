"""The pytest plugin as a user runs it: real cluster, real operator, real Redis/Kafka/S3."""

from __future__ import annotations

import os
import textwrap
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from kubernetes import client

from testenv_api import LABEL_MANAGED_BY, MANAGED_BY
from testenv_harness.ground import kube
from testenv_harness.ground.waiting import wait_for
from testenv_harness.provision.clusters import Cluster

from .conftest import Run

SERVICE_PROCESSES = ("redis-server", "moto.server", "kafka.Kafka", "mosquitto -c", "testenv_operator")


def _service_processes(
    cluster: Cluster, namespace: str, markers: Sequence[str] = SERVICE_PROCESSES
) -> set[int]:
    """Our host processes (data plane, operator) of `cluster`'s runs in `namespace`.

    Containers' processes show in /proc too, but in PID namespaces of their own (kind's pods,
    other Docker containers); `make test` runs the kind tier beside local ones, so the other
    clusters' runs are left out (`_works_for`), and so are other runs on this cluster.
    """
    return {pid for pid in services_of(markers) if _works_for(pid, cluster, namespace)}


def _works_for(pid: int, cluster: Cluster, namespace: str) -> bool:
    """Whether host process `pid` serves runs on `cluster` in `namespace`. An operator works with
    its kubeconfig (KUBECONFIG). A service process serves the local cluster only (a kind cluster's
    run in its node's containers), from a folder named for its pod's namespace, which starts with
    the run's: each xdist worker's local cluster has runs of its own at the same time. (Its
    environment cannot tell: redis-server writes its title over it.)"""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        folder = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False  # gone meanwhile
    for entry in environ:
        if entry.startswith(b"KUBECONFIG="):
            path = entry.split(b"=", 1)[1].decode()
            return os.path.realpath(path) == os.path.realpath(str(cluster.kubeconfig))
    return cluster.provider == "local" and f"/te-{namespace}-" in folder


def services_of(markers: Sequence[str]) -> set[int]:
    """The processes of this PID namespace whose command line holds one of `markers`."""
    pids = set()
    mine = os.readlink("/proc/self/ns/pid")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if os.readlink(entry / "ns" / "pid") != mine:
                    continue
            except OSError:
                continue
            if any(marker in cmdline for marker in markers):
                pids.add(int(entry.name))
    return pids


def _managed_namespaces(cluster: Cluster) -> set[str]:
    core = client.CoreV1Api(kube.api_client(cluster.kubeconfig))
    return {
        n.metadata.name for n in core.list_namespace(label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}").items
    }


@pytest.mark.parametrize(
    ("workers", "teardown"),
    [("0", "wait"), ("2", "background"), ("4", "background")],
)
def test_the_example_suite_passes_and_leaves_nothing_behind(
    run_suite: Run, example_suite: Path, e2e_cluster: Cluster, workers: str, teardown: str
) -> None:
    namespace = f"e2e-{uuid.uuid4().hex[:6]}"  # the run's, to tell its processes from others'
    processes_before = _service_processes(e2e_cluster, namespace)
    namespaces_before = _managed_namespaces(e2e_cluster)
    waits = teardown == "wait"
    result = run_suite(
        "-n", workers, f"--testenv-namespace={namespace}", *(["--testenv-wait-teardown"] if waits else [])
    )
    result.assert_outcomes(passed=11)
    expected_workers = max(1, int(workers))
    ending = (
        "torn down in *all namespaces deleted*"
        if waits
        else "stopped in *s, the namespaces are deleted in the background by operator pid *"
    )
    listed = "redis (redis), kafka (kafka), aws (localstack)"
    result.stdout.fnmatch_lines(
        [
            # The run took our namespace, so the process checks below look at its processes.
            f"*environment {namespace}/*: {expected_workers} worker(s) x {listed}*",
            "*worker 0 ready in *s (*kafka *s*redis *s)*",
            f"*{expected_workers}/{expected_workers} workers ready*{ending}",
        ]
    )
    if waits:
        assert _service_processes(e2e_cluster, namespace) <= processes_before, (
            "a service or operator process outlived the run"
        )
        assert _managed_namespaces(e2e_cluster) <= namespaces_before
        return
    # The services end with the run; the operator finishes the deletion, then exits by itself.
    services = [m for m in SERVICE_PROCESSES if m != "testenv_operator"]
    assert not _service_processes(e2e_cluster, namespace, services) - processes_before, (
        "a service process outlived the run"
    )
    wait_for(
        lambda: (
            _service_processes(e2e_cluster, namespace) <= processes_before
            and _managed_namespaces(e2e_cluster) <= namespaces_before
        ),
        timeout=90,
        what="the run's operator to delete its namespaces and exit",
        seen=lambda: (
            f"processes {_service_processes(e2e_cluster, namespace) - processes_before}, "
            f"namespaces {_managed_namespaces(e2e_cluster) - namespaces_before}"
        ),
    )


BARRIER = '''
from testenv_harness.ground.waiting import wait_for

def barrier(testenv, name, workers=2, timeout=120):
    """Wait until every worker got here: the checks below must overlap in time."""
    folder = testenv.handoff.run_path / "barriers" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(testenv.worker)).touch()
    wait_for(
        lambda: len(list(folder.iterdir())) >= workers,
        timeout=timeout,
        what=f"all {workers} workers at barrier {name}",
        interval=0.1,
        seen=lambda: f"{len(list(folder.iterdir()))} arrived",
    )
'''


def _run_in_two_workers(run_suite: Run, example_suite: Path, pytester: pytest.Pytester, source: str) -> None:
    """Replace the example tests with `source` and run it once in each of two workers, side by side."""
    for test in example_suite.glob("test_*.py"):
        test.unlink()
    pytester.makepyfile(barrier=BARRIER, test_scenario=textwrap.dedent(source))
    run_suite("-n", "2", "--dist", "each").assert_outcomes(passed=2)


def test_what_one_worker_writes_the_other_never_sees(
    run_suite: Run, example_suite: Path, pytester: pytest.Pytester
) -> None:
    _run_in_two_workers(
        run_suite,
        example_suite,
        pytester,
        """
            import os, boto3, redis
            from confluent_kafka import Consumer, Producer
            from barrier import barrier

            def test_isolated(testenv):
                me = str(testenv.worker)
                r = redis.Redis.from_url(testenv.url("redis"))
                r.set("shared-key", me)
                s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
                s3.create_bucket(Bucket="shared")
                s3.put_object(Bucket="shared", Key=f"from-{me}", Body=me.encode())
                producer = Producer({"bootstrap.servers": testenv.url("kafka")})
                producer.produce("shared-topic", value=me.encode())  # deliberately NOT namespaced
                assert producer.flush(30) == 0
                barrier(testenv, "written")
                assert r.get("shared-key") == me.encode()
                assert r.dbsize() == 1
                keys = [o["Key"] for o in s3.list_objects_v2(Bucket="shared")["Contents"]]
                assert keys == [f"from-{me}"]
                consumer = Consumer({"bootstrap.servers": testenv.url("kafka"), "group.id": "g",
                                     "auto.offset.reset": "earliest"})
                consumer.subscribe(["shared-topic"])
                seen = []
                for _ in range(20):
                    message = consumer.poll(1.0)
                    if message is not None and not message.error():
                        seen.append(message.value())
                    elif seen:
                        break
                consumer.close()
                assert seen == [me.encode()]
                barrier(testenv, "checked")
            """,
    )


def test_a_restart_in_one_worker_fails_no_test_in_another(
    run_suite: Run, example_suite: Path, pytester: pytest.Pytester
) -> None:
    _run_in_two_workers(
        run_suite,
        example_suite,
        pytester,
        """
            import time, redis
            from barrier import barrier

            def test_restart_or_work(testenv):
                r = redis.Redis.from_url(testenv.url("redis"))
                barrier(testenv, "start")
                if testenv.worker == 0:
                    for _ in range(3):
                        testenv.restart("redis")
                    assert redis.Redis.from_url(testenv.url("redis")).ping()
                else:
                    deadline = time.monotonic() + 15
                    count = 0
                    while time.monotonic() < deadline:
                        count += 1
                        r.set("k", count)
                        assert int(r.get("k")) == count
                    assert count > 50
                barrier(testenv, "done")
            """,
    )


@pytest.mark.parametrize(
    ("ini", "args", "message"),
    [
        ("[pytest]\ntestenv = true\n", (), "say which services each worker gets"),
        ("[pytest]\n", ("--testenv", "--testenv-manifest=missing.yaml"), "missing.yaml: no such file"),
        ("[pytest]\ntestenv = true\ntestenv_services = redis memcached\n", (), "unknown type 'memcached'"),
        ("[pytest]\n", ("--testenv-keep",), "kube-testenv options were given without --testenv"),
    ],
    ids=["no services", "missing manifest", "unknown service type", "option without --testenv"],
)
def test_bad_options_are_refused_with_what_to_do(
    pytester: pytest.Pytester, ini: str, args: tuple[str, ...], message: str
) -> None:
    pytester.makeini(ini)
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_the_testenv_fixture_without_the_plugin_enabled_says_how(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x(testenv):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*kube-testenv is not enabled: run pytest with --testenv*"])


def test_new_connections_share_the_pods_sessions(run_suite: Run, pytester: pytest.Pytester) -> None:
    """A hundred connections in a row go through the pod's SPDY sessions (no handshake each)."""
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_services = redis\n")
    pytester.makepyfile(
        test_connections="""
            import socket

            def test_connections(testenv):
                for _ in range(100):
                    with socket.create_connection(testenv.host_port("redis"), timeout=10) as sock:
                        sock.sendall(b"*1\\r\\n$4\\r\\nPING\\r\\n")
                        assert sock.recv(64) == b"+PONG\\r\\n"
                forwarder = testenv.forwarder
                assert not forwarder.channels_only, "this API server tunnels SPDY"
                (pod,) = forwarder.pods.ready("redis")
                assert 1 <= forwarder.open_sessions(pod) <= 4
            """
    )
    run_suite("-n", "0").assert_outcomes(passed=1)


EXEC_PLUGIN_TEST = '''
    import json, socket, sys
    from pathlib import Path

    import yaml
    from kubernetes import client, config

    from testenv_harness.ground.localports import free_port
    from testenv_harness.tunnel.portforward import Forwarder

    PLUGIN = """
    import datetime, json
    with open({calls!r}, "a") as log:
        log.write("called\\\\n")
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30)
    status = {{"token": {token!r}, "expirationTimestamp": soon.strftime("%Y-%m-%dT%H:%M:%SZ")}}
    print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                      "status": status}}))
    """

    def ping(port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"*1\\r\\n$4\\r\\nPING\\r\\n")
            return sock.recv(64)

    def test_forward_with_an_exec_plugin(testenv, tmp_path):
        ns, core = testenv.namespace, client.CoreV1Api(testenv.api)
        rbac = client.RbacAuthorizationV1Api(testenv.api)
        core.create_namespaced_service_account(ns, {"metadata": {"name": "ci"}})
        rbac.create_namespaced_role(ns, {"metadata": {"name": "ci"}, "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get", "create"]}]})
        rbac.create_namespaced_role_binding(ns, {"metadata": {"name": "ci"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ci"},
            "subjects": [{"kind": "ServiceAccount", "name": "ci", "namespace": ns}]})
        token = core.create_namespaced_service_account_token(
            "ci", ns, {"spec": {"expirationSeconds": 600}}).status.token
        calls = tmp_path / "calls"
        plugin = tmp_path / "plugin.py"
        plugin.write_text(PLUGIN.format(calls=str(calls), token=token))
        cfg = testenv.api.configuration
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "ci",
            "clusters": [{"name": "c", "cluster": {
                "server": cfg.host, "certificate-authority": cfg.ssl_ca_cert}}],
            "users": [{"name": "ci", "user": {"exec": {
                "apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                "args": [str(plugin)], "interactiveMode": "Never"}}}],
            "contexts": [{"name": "ci", "context": {"cluster": "c", "user": "ci", "namespace": ns}}]}))
        forwarder = Forwarder(config.new_client_from_config(str(kubeconfig)), ns)
        try:
            port = free_port()
            forwarder.listen("redis", 6379, port)
            assert ping(port) == b"+PONG\\r\\n"
            before = len(calls.read_text().splitlines())
            forwarder.drop_pods(lambda pod: True)  # the next connection needs a new session
            assert ping(port) == b"+PONG\\r\\n"
            # The token expires within the client's skew, so a session's handshake must run the plugin.
            assert len(calls.read_text().splitlines()) > before
            assert not forwarder.channels_only
        finally:
            forwarder.close()
'''


def test_port_forwards_authenticate_through_an_exec_credential_plugin(
    run_suite: Run, pytester: pytest.Pytester
) -> None:
    """A kubeconfig whose user is an exec plugin (as on EKS and GKE), with a service account's
    token limited to the worker namespace: the forward's sessions run the plugin, not a cached header."""
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_services = redis\n")
    pytester.makepyfile(test_exec=textwrap.dedent(EXEC_PLUGIN_TEST))
    run_suite("-n", "0").assert_outcomes(passed=1)
