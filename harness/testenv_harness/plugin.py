"""The pytest plugin (entry point `testenv`): inactive unless `--testenv` or `testenv = true`.

The controller (or the only process, without xdist) sets the run up in `pytest_configure` and
hands every worker a `Handoff` through `pytest_configure_node`; each worker's session fixture
`testenv` then waits for that worker's own services only.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from testenv_harness.errors import TestEnvError
from testenv_harness.handoff import Handoff, worker_index
from testenv_harness.session import PROVIDERS, RunOptions, RunSession, load_manifest, parse_services
from testenv_harness.testenv import TestEnv

_HANDOFF = pytest.StashKey[Handoff]()
_SESSION = pytest.StashKey[RunSession]()
_WORKERINPUT_KEY = "testenv_handoff"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("testenv", "kube-testenv: each xdist worker gets its own services on Kubernetes")
    group.addoption("--testenv", action="store_true", help="enable kube-testenv for this run")
    group.addoption(
        "--testenv-manifest", metavar="FILE", help="TestEnvironment manifest to apply (workers is set to -n)"
    )
    group.addoption(
        "--testenv-cluster",
        choices=PROVIDERS,
        default=None,
        help="where to run: local (kwokctl, no Docker), kind, existing (current kubeconfig); default auto",
    )
    group.addoption(
        "--testenv-cluster-name", default=None, help="cluster name for local/kind (default testenv)"
    )
    group.addoption(
        "--testenv-namespace", default=None, help="namespace for the TestEnvironment (default default)"
    )
    group.addoption(
        "--testenv-operator",
        choices=("auto", "subprocess", "cluster"),
        default="auto",
        help="run the operator as a subprocess, or use the one installed in the cluster "
        "(default: cluster for "
        "existing, subprocess otherwise)",
    )
    group.addoption(
        "--testenv-keep", action="store_true", help="keep the environment after the run, for debugging"
    )
    group.addoption(
        "--testenv-timeout", type=float, default=None, help="seconds a worker waits for its services"
    )
    parser.addini("testenv", "enable kube-testenv (like --testenv)", type="bool", default=False)
    parser.addini("testenv_manifest", "TestEnvironment manifest, relative to the ini file", default="")
    parser.addini(
        "testenv_services", "services when there is no manifest: redis, kafka or name:type", type="args"
    )
    parser.addini("testenv_cluster", "auto, local, kind or existing", default="auto")
    parser.addini("testenv_timeout", "seconds a worker waits for its services", default="300")


def _active(config: pytest.Config) -> bool:
    return bool(config.getoption("testenv") or config.getini("testenv"))


def _workers(config: pytest.Config) -> int:
    count = getattr(config.option, "numprocesses", None) or 0
    if getattr(config.option, "dist", "no") == "no" and not count:
        return 1
    return max(1, int(count))


def _options(config: pytest.Config) -> RunOptions:
    manifest_option = config.getoption("testenv_manifest") or config.getini("testenv_manifest")
    services = config.getini("testenv_services")
    if manifest_option and services:
        raise pytest.UsageError("kube-testenv: give either a manifest or testenv_services, not both")
    try:
        if manifest_option:
            base = (
                config.rootpath
                if config.getoption("testenv_manifest")
                else (config.inipath or config.rootpath).parent
            )
            manifest = load_manifest(
                (Path(base) / manifest_option)
                if not Path(manifest_option).is_absolute()
                else Path(manifest_option)
            )
        elif services:
            manifest = {
                "apiVersion": "testenv.dev/v1alpha1",
                "kind": "TestEnvironment",
                "metadata": {"name": "run"},
                "spec": {"services": parse_services(services)},
            }
        else:
            raise ValueError(
                "say which services each worker gets: --testenv-manifest FILE, "
                "or `testenv_services = redis kafka` "
                "in the ini file"
            )
        timeout = float(config.getoption("testenv_timeout") or config.getini("testenv_timeout"))
    except ValueError as exc:
        raise pytest.UsageError(f"kube-testenv: {exc}") from exc
    workers = _workers(config)
    if workers > 256:
        raise pytest.UsageError(
            f"kube-testenv: {workers} xdist workers, but a TestEnvironment allows at most 256"
        )
    return RunOptions(
        workers=workers,
        manifest=manifest,
        provider=config.getoption("testenv_cluster") or config.getini("testenv_cluster"),
        cluster_name=config.getoption("testenv_cluster_name") or "testenv",
        namespace=config.getoption("testenv_namespace") or "default",
        operator=config.getoption("testenv_operator"),
        keep=bool(config.getoption("testenv_keep")),
        timeout=timeout,
    )


class _XdistHooks:
    """Registered only when xdist is present (its hook would be unknown otherwise)."""

    def __init__(self, handoff: Handoff) -> None:
        self.handoff = handoff

    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[_WORKERINPUT_KEY] = self.handoff.to_json()


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        if _WORKERINPUT_KEY in workerinput:
            config.stash[_HANDOFF] = Handoff.from_json(workerinput[_WORKERINPUT_KEY])
        return
    if not _active(config):
        if config.getoption("testenv_keep") or config.getoption("testenv_manifest"):
            raise pytest.UsageError("kube-testenv options were given without --testenv (or `testenv = true`)")
        return
    options = _options(config)
    reporter = config.pluginmanager.get_plugin("terminalreporter")

    def report(line: str) -> None:
        if reporter is not None:
            reporter.write_line(f"testenv: {line}")

    session = RunSession(options, report)
    config.stash[_SESSION] = session
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        handoff = session.start()
    except BaseException as exc:
        del config.stash[_SESSION]  # torn down here, not again in pytest_unconfigure
        report(f"set-up failed: {exc}")
        report(session.stop())
        if isinstance(exc, (TestEnvError, ValueError)):
            raise pytest.UsageError(f"kube-testenv could not set up the run: {exc}") from exc
        raise
    config.stash[_HANDOFF] = handoff
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(handoff), "testenv-xdist")
    if not getattr(config.option, "numprocesses", None):
        session.wait_reported(options.timeout)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION, None)
    if session is not None:
        del config.stash[_SESSION]
        summary = session.stop()
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"testenv: {summary}")


@pytest.fixture(scope="session")
def testenv(request: pytest.FixtureRequest) -> Iterator[TestEnv]:
    """This worker's own services: `testenv.url("redis")`, `testenv.restart("redis")`, ..."""
    handoff = request.config.stash.get(_HANDOFF, None)
    if handoff is None:
        pytest.fail(
            "kube-testenv is not enabled: run pytest with --testenv, or set `testenv = true` in the ini file"
        )
    workerinput = getattr(request.config, "workerinput", {})
    env = TestEnv(handoff, worker_index(workerinput.get("workerid"))).connect()
    yield env
    env.close()


@pytest.fixture(scope="session", autouse=True)
def _testenv_autostart(request: pytest.FixtureRequest) -> None:
    """With kube-testenv on, connect before the first test so the variables are set for all."""
    if request.config.stash.get(_HANDOFF, None) is not None:
        request.getfixturevalue("testenv")
