"""The `testenv` CLI driven as a user drives it: subprocesses, the Ginkgo example suite, signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from testenv_api import ANNOTATION_HEARTBEAT, GROUP, LABEL_OWNER_NAMESPACE, PLURAL, VERSION
from testenv_harness.ground import kube
from testenv_harness.ground.errors import ToolchainError
from testenv_harness.ground.waiting import wait_for
from testenv_harness.provision import toolchain
from testenv_harness.provision.clusters import Cluster
from testenv_harness.run import runstate
from tests.e2e import outages
from tests.suites import EXAMPLES, TESTENV, Run

GINKGO_SUITE = EXAMPLES / "ginkgo"


@pytest.fixture
def ginkgo_path() -> str:
    """PATH with the pinned ginkgo CLI first; a missing build fails with the command that makes it."""
    try:
        ginkgo = toolchain.binary("ginkgo")
    except ToolchainError as exc:
        pytest.fail(str(exc))
    return f"{ginkgo.parent}{os.pathsep}{os.environ['PATH']}"


def _namespace_of(where: list[str]) -> str:
    return next(arg.split("=", 1)[1] for arg in where if arg.startswith("--namespace="))


def _nothing_left(cluster: Cluster, namespace: str, timeout: float = 90) -> None:
    """No TestEnvironment and no worker namespace of `namespace` is left, within `timeout`: a run
    that did not wait for its teardown leaves it to its operator, which finishes it meanwhile."""
    api = kube.api_client(cluster.kubeconfig)

    def left() -> str:
        items = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        owned = client.CoreV1Api(api).list_namespace(label_selector=f"{LABEL_OWNER_NAMESPACE}={namespace}")
        return (
            f"TestEnvironments {[i['metadata']['name'] for i in items['items']]}, "
            f"worker namespaces {[n.metadata.name for n in owned.items]}"
        )

    wait_for(
        lambda: left() == "TestEnvironments [], worker namespaces []",
        timeout=timeout,
        what=f"{namespace} to be clean",
        seen=left,
    )


def _ginkgo(
    where: list[str], path: str, workers: int, *ginkgo: str, options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    run = [*TESTENV, "run", "-f", "testenvironment.yaml", f"--workers={workers}", *where, *options]
    return subprocess.run(
        [*run, "--", *ginkgo],
        cwd=GINKGO_SUITE,
        env=dict(os.environ, PATH=path),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.mark.parametrize(
    ("workers", "ginkgo"),
    [(4, ("ginkgo", "--no-color", "-p", "--procs", "4")), (1, ("ginkgo", "--no-color", "--procs", "1"))],
    ids=["procs-4", "procs-1"],
)
def test_the_ginkgo_suite_passes_with_a_redis_and_kafka_per_process(
    where: list[str],
    ginkgo_path: str,
    local_cluster: Cluster,
    workers: int,
    ginkgo: tuple[str, ...],
    tmp_path: Path,
) -> None:
    page, specs = tmp_path / "timeline.html", tmp_path / "ginkgo.json"
    options = (f"--timeline={page}", f"--timeline-specs={specs}")
    result = _ginkgo(where, ginkgo_path, workers, *ginkgo, f"--json-report={specs}", options=options)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "11 Passed | 0 Failed" in result.stdout, result.stdout[-3000:]
    if workers > 1:
        assert f"Running in parallel across {workers} processes" in result.stdout
    assert "the namespaces are deleted in the background by operator pid" in result.stderr
    _nothing_left(local_cluster, _namespace_of(where))

    # The run's timeline: its steps, each worker's forwards, the command, and Ginkgo's specs on
    # the row of the worker whose variables their process used.
    assert f"timeline: {page}" in result.stderr
    events = json.loads(page.with_suffix(".json").read_text())["events"]
    steps = {e["name"] for e in events if e["row"] is None}
    assert {"cluster", "operator", "environment", "teardown: environment"} <= steps
    (command,) = [e for e in events if e["kind"] == "command"]
    assert command["name"].startswith("ginkgo ")
    tests = [e for e in events if e["kind"] == "test"]
    assert len(tests) == 11
    assert {e["outcome"] for e in tests} == {"passed"}
    rows = {e["row"] for e in tests}
    assert rows <= set(range(workers)), "each process's specs on its own worker"
    assert len(rows) > 1 or workers == 1, "the specs ran on more than one worker"
    assert all(command["start"] <= e["start"] <= e["end"] <= command["end"] for e in tests)
    for row in range(workers):
        assert any(e["row"] == row and e["name"] == "forwards ready" for e in events), f"worker {row}"


def test_the_ginkgo_suite_fails_when_two_processes_share_a_redis(where: list[str], ginkgo_path: str) -> None:
    share = "export REDIS_URL_1=$REDIS_URL_0 REDIS_URL_2=$REDIS_URL_0 REDIS_URL_3=$REDIS_URL_0"
    result = _ginkgo(where, ginkgo_path, 4, "sh", "-c", f"{share}; exec ginkgo --no-color -p --procs 4")
    assert result.returncode != 0, "one Redis for every process must fail the suite"
    assert "shares its Redis" in result.stdout, result.stdout[-3000:]


def _redis(port: int, *command: str) -> bytes:
    """One command in RESP; the raw reply."""
    wire = f"*{len(command)}\r\n" + "".join(f"${len(c)}\r\n{c}\r\n" for c in command)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(wire.encode())
        return sock.recv(4096)


@pytest.fixture
def run_name() -> Iterator[str]:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    yield name
    state = runstate.load(name)
    if state is not None:  # a failed test must not leave its run (and its processes) behind
        subprocess.run([*TESTENV, "down", "--run", name], capture_output=True, timeout=300, check=False)


def test_up_forward_env_status_down_from_four_background_processes(
    where: list[str], run_name: str, local_cluster: Cluster
) -> None:
    up = subprocess.run(
        [*TESTENV, "up", "--service", "redis", "--workers", "4", "--run", run_name, *where],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == run_name
    forwards = [
        subprocess.Popen(
            [*TESTENV, "forward", "--run", run_name, "--worker", str(i), "--format", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    try:
        ports = []
        for i, forward in enumerate(forwards):
            assert forward.stdout is not None
            variables = json.loads(forward.stdout.readline())
            assert variables["TESTENV_WORKER"] == str(i)
            ports.append(int(variables["REDIS_PORT"]))
            assert _redis(ports[-1], "SET", "owner", str(i)) == b"+OK\r\n"
        assert len(set(ports)) == 4
        for i, port in enumerate(ports):  # the same key, four Redis servers
            assert _redis(port, "GET", "owner") == f"$1\r\n{i}\r\n".encode()

        env = subprocess.run(
            [*TESTENV, "env", "--run", run_name, "--worker", "2", "--format", "dotenv"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert f"REDIS_PORT={ports[2]}" in env.stdout.splitlines()

        status = subprocess.run(
            [*TESTENV, "status", "--run", run_name, "-o", "json"], capture_output=True, text=True, check=True
        )
        (row,) = json.loads(status.stdout)
        assert (row["phase"], row["alive"], row["workers"]) == ("ready", True, 4)
        assert row["cluster_view"]["phase"] == "Ready"

        busy = subprocess.run(
            [*TESTENV, "forward", "--run", run_name, "--worker", "1"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert busy.returncode == 1
        assert busy.stderr.strip().splitlines()[-1].startswith("testenv: error: local port")
        assert "in use" in busy.stderr

        down = subprocess.run(
            [*TESTENV, "down", "--run", run_name], capture_output=True, text=True, timeout=300, check=False
        )
        assert down.returncode == 0, down.stderr
        for forward in forwards:  # each forward notices the run ended and stops by itself
            assert forward.wait(30) == 0
    finally:
        for forward in forwards:
            if forward.poll() is None:
                forward.kill()
                forward.wait()
    assert runstate.load(run_name) is None
    _nothing_left(local_cluster, _namespace_of(where))


def _start_run(where: list[str], run_name: str, *command: str) -> subprocess.Popen[str]:
    """`testenv run` in a process group of its own, as a terminal's foreground job is."""
    return subprocess.Popen(
        [*TESTENV, "run", "--service", "redis", "--workers", "2", "--run", run_name, *where, "--", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


_WAITS = [
    sys.executable,
    "-c",
    # SIGINT as a runner has it: a shell starting CI in the background (`cmd &`) hands its jobs
    # SIGINT ignored, and that disposition would reach this command through testenv.
    "import os, signal, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "print(os.environ['REDIS_URL_1'], flush=True); time.sleep(600)",
]


def test_ctrl_c_in_the_middle_of_run_stops_the_command_and_tears_down(
    where: list[str], run_name: str, local_cluster: Cluster
) -> None:
    run = _start_run(where, run_name, *_WAITS)
    assert run.stdout is not None
    assert run.stdout.readline().startswith("redis://localhost:")
    os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C at a terminal does: the whole foreground group
    assert run.wait(300) == 130
    _, err = run.communicate()
    assert "got SIGINT" in err
    assert "deleted in the background" in err
    assert runstate.load(run_name) is None
    _nothing_left(local_cluster, _namespace_of(where))


def test_sigterm_to_run_alone_is_passed_on_and_tears_down(
    where: list[str], run_name: str, local_cluster: Cluster
) -> None:
    run = _start_run([*where, "--wait-teardown"], run_name, *_WAITS)
    assert run.stdout is not None
    run.stdout.readline()
    run.terminate()
    assert run.wait(300) == 128 + signal.SIGTERM
    assert "all namespaces deleted" in run.communicate()[1]
    _nothing_left(local_cluster, _namespace_of(where))


def test_a_run_killed_with_9_takes_its_command_along_and_sweep_reclaims_it(
    where: list[str], run_name: str, local_cluster: Cluster
) -> None:
    run = _start_run(where, run_name, *_WAITS)
    assert run.stdout is not None
    url = run.stdout.readline()
    state = runstate.load(run_name)
    assert state is not None
    assert state.pid == run.pid
    command = next(
        int(pid)
        for pid in os.listdir("/proc")
        if pid.isdigit() and _parent(int(pid)) == run.pid and "time.sleep" in _cmdline(int(pid))
    )
    os.kill(run.pid, signal.SIGKILL)
    run.wait(10)
    wait_for(lambda: not runstate.alive(command), timeout=20, what=f"the command (pid {command}) to end")
    status = subprocess.run(
        [*TESTENV, "status", "--run", run_name], capture_output=True, text=True, check=True
    )
    assert "gone (`testenv sweep`)" in status.stdout
    sweep = subprocess.run([*TESTENV, "sweep"], capture_output=True, text=True, timeout=300, check=False)
    assert sweep.returncode == 0, sweep.stderr
    assert f"run {run_name!r}: process {run.pid} is gone" in sweep.stderr
    assert runstate.load(run_name) is None
    _nothing_left(local_cluster, _namespace_of(where))
    assert url.startswith("redis://")


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _heartbeat(cluster: Cluster, namespace: str) -> str:
    """The heartbeat of the one environment in `namespace`."""
    objects = client.CustomObjectsApi(kube.api_client(cluster.kubeconfig))
    (body,) = objects.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    return str(body["metadata"]["annotations"][ANNOTATION_HEARTBEAT])


@pytest.mark.chaos
@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_a_run_goes_on_through_a_control_plane_restart(
    component: str, where: list[str], run_name: str, local_cluster: Cluster
) -> None:
    """Killed (-9) and back 3 s later: forwards reconnect, the heartbeat is renewed, down is clean."""
    up = subprocess.run(
        [*TESTENV, "up", "--service", "redis", "--workers", "2", "--forward", "--run", run_name, *where],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    env = subprocess.run(
        [*TESTENV, "env", "--run", run_name, "--worker", "1", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    port = int(json.loads(env.stdout)["REDIS_PORT"])
    assert _redis(port, "SET", "survives", "yes") == b"+OK\r\n"
    namespace = _namespace_of(where)
    before = _heartbeat(local_cluster, namespace)

    outages.restart(local_cluster.kubeconfig.parent, component)
    restarted = time.monotonic()
    # A new connection needs a new tunnel through the API server, which must be back.
    answer = wait_for(
        lambda: _redis(port, "GET", "survives"),
        timeout=90,
        what=f"worker 1's Redis through a new forward after the {component} restart",
        retry=(OSError,),
    )
    assert answer == b"$3\r\nyes\r\n"
    reconnected = time.monotonic() - restarted
    # The run's heartbeat (every 30 s) retries through the outage rather than giving up.
    wait_for(
        lambda: _heartbeat(local_cluster, namespace) != before,
        timeout=90,
        what="a heartbeat after the restart",
        retry=(OSError, ApiException),
    )
    print(f"[chaos] {component} killed and restarted: a new connection answered {reconnected:.1f}s later")

    down = subprocess.run(
        [*TESTENV, "down", "--run", run_name], capture_output=True, text=True, timeout=300, check=False
    )
    assert down.returncode == 0, down.stderr
    assert runstate.load(run_name) is None
    _nothing_left(local_cluster, namespace)


def test_the_plugin_and_the_cli_number_the_same_two_workers_alike(
    where: list[str], run_name: str, run_suite: Run, pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """One numbering for everything a user sees: worker N is TESTENV_WORKER=N, `testenv.worker`
    N, `--worker N`, the suffix _N and the namespace ending in -wN, in the plugin and the CLI."""
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_services = redis\n")
    pytester.makepyfile(
        test_numbers=f"""
        import json, os, pathlib

        def test_record(testenv):
            seen = {{"variable": os.environ["TESTENV_WORKER"], "attribute": testenv.worker,
                    "namespace": os.environ["TESTENV_NAMESPACE"]}}
            out = pathlib.Path({str(tmp_path)!r}) / f"numbers-{{testenv.worker}}.json"
            out.write_text(json.dumps(seen))
        """
    )
    result = run_suite("-n", "2", "--dist", "each")
    result.assert_outcomes(passed=2)
    plugin = {}
    for path in tmp_path.glob("numbers-*.json"):
        seen = json.loads(path.read_text())
        plugin[int(seen["variable"])] = (seen["attribute"], seen["namespace"].rsplit("-", 1)[1])
    assert plugin == {0: (0, "w0"), 1: (1, "w1")}, plugin

    up = subprocess.run(
        [*TESTENV, "up", "--service", "redis", "--workers", "2", "--run", run_name, *where],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    cli = {}
    for number in (0, 1):
        shown = subprocess.run(
            [*TESTENV, "env", "--run", run_name, "--worker", str(number), "--format", "json"],
            capture_output=True,
            text=True,
            check=True,
        )
        variables = json.loads(shown.stdout)
        cli[int(variables["TESTENV_WORKER"])] = (number, variables["TESTENV_NAMESPACE"].rsplit("-", 1)[1])
    assert cli == plugin
    every = subprocess.run(
        [*TESTENV, "env", "--run", run_name, "--format", "json"], capture_output=True, text=True, check=True
    )
    numbered = json.loads(every.stdout)
    assert numbered["TESTENV_NAMESPACE_0"].endswith("-w0")
    assert numbered["TESTENV_NAMESPACE_1"].endswith("-w1")
    beyond = subprocess.run(
        [*TESTENV, "env", "--run", run_name, "--worker", "2"], capture_output=True, text=True, check=False
    )
    assert "has workers 0-1 (numbered from 0), not 2" in beyond.stderr
