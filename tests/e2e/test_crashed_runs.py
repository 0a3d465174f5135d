"""A run killed with -9 leaves no process of ours behind (its environment goes by heartbeat expiry),
and the next run's set-up removes the folder it left."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from testenv_api import FINALIZER, GROUP, LABEL_OWNER_NAMESPACE, PLURAL, VERSION
from testenv_harness.ground import kube
from testenv_harness.ground.waiting import wait_for
from testenv_harness.provision.clusters import Cluster
from testenv_harness.run import run_dirs
from testenv_harness.run.options import RunOptions
from testenv_harness.run.session import RunSession
from tests.suites import CACHE


def _children(parent: int) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found[int(entry.name)] = cmdline
    return found


def _run_folders_of(pid: int) -> list[Path]:
    """The run folders (testenv_harness.run.run_dirs) whose owner record names process `pid`."""
    found = []
    for folder in Path(tempfile.gettempdir()).glob("testenv-*-*"):
        with contextlib.suppress(OSError):
            if (folder / run_dirs.OWNER).read_text().split()[0] == str(pid):
                found.append(folder)
    return found


def _alive(pid: int) -> bool:
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False


@pytest.mark.chaos
def test_kill_9_of_the_controller_takes_its_operator_along(
    pytester: pytest.Pytester, local_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", CACHE)
    namespace = f"crash-{uuid.uuid4().hex[:6]}"
    pytester.makeini("[pytest]\ntestenv = true\ntestenv_services = redis\n")
    pytester.makepyfile(test_slow="import time\n\ndef test_slow(testenv):\n    time.sleep(300)\n")
    controller = pytester.popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--testenv-cluster=local",
            f"--testenv-cluster-name={local_cluster.name}",
            f"--testenv-namespace={namespace}",
        ],
        stdin=pytester.path.joinpath("nothing").open("w+"),
    )
    api = kube.api_client(local_cluster.kubeconfig)
    try:
        operator: list[int] = []

        def operator_started() -> bool:
            operator[:] = [p for p, cmd in _children(controller.pid).items() if "testenv_operator" in cmd]
            return bool(operator)

        wait_for(operator_started, timeout=120, what="the run's operator subprocess")
        owned = f"{LABEL_OWNER_NAMESPACE}={namespace}"
        core = client.CoreV1Api(api)
        wait_for(
            lambda: core.list_namespace(label_selector=owned).items, timeout=120, what="the worker namespace"
        )
        (folder,) = _run_folders_of(controller.pid)
        os.kill(controller.pid, signal.SIGKILL)
        controller.wait(10)
        wait_for(lambda: not _alive(operator[0]), timeout=20, what=f"operator pid {operator[0]} to exit")
        assert folder.is_dir()  # what it could not remove itself: the next run's set-up does
        RunSession(RunOptions(workers=1, manifest={}, namespace=namespace), print).remove_run_dir()
        assert not folder.exists(), f"the dead run's folder {folder} is still there"
    finally:
        if controller.poll() is None:
            controller.kill()
        _clean_up(api, namespace)


def _clean_up(api: client.ApiClient, namespace: str) -> None:
    """What heartbeat expiry would do minutes later: the test's own environment goes now."""
    objects, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    for item in objects.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]:
        name = item["metadata"]["name"]
        finalizers = [f for f in item["metadata"].get("finalizers", []) if f != FINALIZER]
        objects.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"finalizers": finalizers}}
        )
        objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    for ns in core.list_namespace(label_selector=f"{LABEL_OWNER_NAMESPACE}={namespace}").items:
        core.delete_namespace(ns.metadata.name)
    try:
        core.delete_namespace(namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
