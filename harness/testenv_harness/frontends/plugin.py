"""The pytest plugin (entry point `testenv`): inactive unless `--testenv` or `testenv = true`.

The controller (or the only process, without xdist) is a plugin object, `Controller`, that sets
the run up only once tests are going to run and tears it down at the end of the session. Each
xdist worker gets a slot and the run's folder through `pytest_configure_node`; its session
fixture `testenv` waits for the published `Handoff`, then for its own services only.

A failed test's report gets its worker's services' state and log lines (failure_logs.py); with
`--testenv-timeline FILE` the controller writes the run's timeline at the end (timeline.py).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from testenv_api import MAX_WORKERS
from testenv_harness.frontends import failure_logs, timeline
from testenv_harness.ground.errors import TestEnvError
from testenv_harness.run import runstate
from testenv_harness.run.options import (
    CLUSTER_CHOICES,
    CONNECT_MODES,
    DEFAULT_IDLE_SECONDS,
    RunOptions,
    Session,
    load_manifest,
    services_manifest,
)
from testenv_harness.worker.handoff import Slots, publish_failure, receive
from testenv_harness.worker.testenv import TestEnv

_CONTROLLER = pytest.StashKey["Controller"]()
#: On a worker: {"run_dir", "slot", "reused", "variables", "keeper"} from the controller, through
#: xdist's workerinput.
_WORKER = pytest.StashKey[dict[str, Any]]()
_WORKERINPUT_KEY = "testenv_worker"
#: What this process's worker did, for the run's timeline (only with a timeline asked for).
_WORKER_EVENTS = pytest.StashKey[timeline.WorkerEvents]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("testenv", "kube-testenv: each xdist worker gets its own services on Kubernetes")
    group.addoption("--testenv", action="store_true", help="enable kube-testenv for this run")
    group.addoption(
        "--testenv-manifest", metavar="FILE", help="TestEnvironment manifest to apply (workers is set to -n)"
    )
    group.addoption(
        "--testenv-cluster",
        choices=CLUSTER_CHOICES,
        default=None,
        help="where to run: local (kwokctl, no Docker), kind, existing (current kubeconfig); default auto",
    )
    group.addoption(
        "--testenv-cluster-name", default=None, help="cluster name for local/kind (default testenv)"
    )
    group.addoption(
        "--testenv-namespace",
        default=None,
        help="namespace for the TestEnvironment (default: for existing, the kubeconfig context's or "
        "the pod's own; else default)",
    )
    group.addoption(
        "--testenv-kubeconfig",
        metavar="FILE",
        default=None,
        help="kubeconfig of an existing cluster (default: $KUBECONFIG, ~/.kube/config, or in a pod its "
        "own ServiceAccount token)",
    )
    group.addoption("--testenv-context", default=None, help="kubeconfig context of an existing cluster")
    group.addoption(
        "--testenv-connect",
        choices=CONNECT_MODES,
        default=None,
        help="how workers reach their services: forward (port-forwards through the API server), direct "
        "(the Services' DNS names, from a pod in the cluster); default auto: direct inside a pod",
    )
    group.addoption(
        "--testenv-operator",
        choices=("auto", "subprocess", "cluster"),
        default=None,
        help="run the operator as a subprocess, or use the one installed in the cluster "
        "(default: cluster for "
        "existing, subprocess otherwise)",
    )
    group.addoption(
        "--testenv-keep", action="store_true", help="keep the environment after the run, for debugging"
    )
    group.addoption(
        "--testenv-wait-teardown",
        action="store_true",
        help="end the run only once its namespaces are deleted (default: they go in the background)",
    )
    group.addoption(
        "--testenv-reuse",
        action="store_true",
        help="keep the environment after the run and reuse it in the next one, reset (see docs/harness.md)",
    )
    group.addoption(
        "--testenv-timeout", type=float, default=None, help="seconds a worker waits for its services"
    )
    group.addoption(
        "--testenv-log-lines",
        type=int,
        default=None,
        metavar="N",
        help="a failed test's report shows the last N lines each of its worker's services wrote while it "
        f"ran, and their state (default {failure_logs.DEFAULT_LINES}; 0: off)",
    )
    group.addoption(
        "--testenv-timeline",
        metavar="FILE",
        default=None,
        help="write the run's timeline (a row per worker: set-up steps, pods, tests) to FILE, one HTML "
        "page, and its events to FILE with .json",
    )
    group.addoption(
        "--testenv-tests",
        action="append",
        metavar="PATH|marked",
        help="which tests need the environment (repeatable): paths, or `marked` for only tests marked "
        "@pytest.mark.testenv or using the testenv fixture (they always count); default: every test",
    )
    parser.addini("testenv", "enable kube-testenv (like --testenv)", type="bool", default=False)
    parser.addini(
        "testenv_tests",
        "which tests need the environment: paths (relative to the ini file) and/or `marked`; default all",
        type="args",
    )
    parser.addini("testenv_manifest", "TestEnvironment manifest, relative to the ini file", default="")
    parser.addini(
        "testenv_services", "services when there is no manifest: redis, kafka or name:type", type="args"
    )
    parser.addini("testenv_cluster", "auto, local, kind or existing", default="auto")
    parser.addini("testenv_cluster_name", "cluster name for local/kind", default="testenv")
    parser.addini(
        "testenv_namespace", "namespace for the TestEnvironment (like --testenv-namespace)", default=""
    )
    parser.addini("testenv_operator", "auto, subprocess or cluster (like --testenv-operator)", default="auto")
    parser.addini("testenv_connect", "auto, forward or direct (like --testenv-connect)", default="auto")
    parser.addini("testenv_timeout", "seconds a worker waits for its services", default="300")
    parser.addini(
        "testenv_reuse", "reuse environments between runs (like --testenv-reuse)", type="bool", default=False
    )
    parser.addini(
        "testenv_reuse_idle",
        "seconds a kept environment waits for the next run before it is torn down",
        default=str(DEFAULT_IDLE_SECONDS),
    )
    parser.addini(
        "testenv_log_lines",
        "lines of each service a failed test's report shows (like --testenv-log-lines; 0: off)",
        default=str(failure_logs.DEFAULT_LINES),
    )
    parser.addini(
        "testenv_timeline", "the run's timeline page (like --testenv-timeline), relative to the ini file"
    )
    parser.addini(
        "testenv_wait_teardown",
        "end the run only once its namespaces are deleted (like --testenv-wait-teardown)",
        type="bool",
        default=False,
    )


def _active(config: pytest.Config) -> bool:
    return bool(config.getoption("testenv") or config.getini("testenv"))


def _workers(config: pytest.Config) -> int:
    count = getattr(config.option, "numprocesses", None) or 0
    if getattr(config.option, "dist", "no") == "no" and not count:
        return 1
    return max(1, int(count))


def _timeout(config: pytest.Config) -> float:
    """Seconds a worker waits (ValueError for a value that is not a number)."""
    return float(config.getoption("testenv_timeout") or config.getini("testenv_timeout"))


def _log_lines(config: pytest.Config) -> int:
    """Lines per service on a failed test's report (0: none, and no state either)."""
    option = config.getoption("testenv_log_lines")
    raw = str(option) if option is not None else str(config.getini("testenv_log_lines")).strip()
    try:
        lines = int(raw)
    except ValueError:
        lines = -1
    if lines < 0:
        raise pytest.UsageError(
            f"kube-testenv: testenv_log_lines = {raw!r}: give a number of lines, 0 for none"
        )
    return lines


def _timeline_path(config: pytest.Config) -> Path | None:
    """Where the timeline page goes: the option's path is the shell's, the ini's the ini file's."""
    option = config.getoption("testenv_timeline")
    if option:
        return Path(config.invocation_params.dir) / str(option)
    ini = str(config.getini("testenv_timeline") or "").strip()
    return (config.inipath or config.rootpath).parent / ini if ini else None


def _reuse_idle(config: pytest.Config) -> float | None:
    """Seconds a kept environment waits for the next run, or None with reuse off."""
    if not (config.getoption("testenv_reuse") or config.getini("testenv_reuse")):
        return None
    if config.getoption("testenv_keep"):
        raise pytest.UsageError("kube-testenv: --testenv-keep and reuse exclude each other: choose one")
    raw = config.getini("testenv_reuse_idle")
    try:
        idle = float(raw)
    except ValueError:
        idle = -1.0
    if idle <= 0:
        raise pytest.UsageError(
            f"kube-testenv: testenv_reuse_idle = {raw!r}: give the seconds a kept environment waits, e.g. 900"
        )
    return idle


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
            manifest = services_manifest(services)
        else:
            raise ValueError(
                "say which services each worker gets: --testenv-manifest FILE, "
                "or `testenv_services = redis kafka` "
                "in the ini file"
            )
        timeout = _timeout(config)
    except ValueError as exc:
        raise pytest.UsageError(f"kube-testenv: {exc}") from exc
    workers = _workers(config)
    if workers > MAX_WORKERS:
        raise pytest.UsageError(
            f"kube-testenv: {workers} xdist workers, but a TestEnvironment allows at most {MAX_WORKERS}"
        )
    operator = config.getoption("testenv_operator") or config.getini("testenv_operator")
    connect = config.getoption("testenv_connect") or config.getini("testenv_connect")
    for key, value, allowed in (
        ("testenv_operator", operator, ("auto", "subprocess", "cluster")),
        ("testenv_connect", connect, CONNECT_MODES),
    ):
        if value not in allowed:
            raise pytest.UsageError(f"kube-testenv: {key} = {value!r}: use one of {', '.join(allowed)}")
    return RunOptions(
        workers=workers,
        manifest=manifest,
        provider=config.getoption("testenv_cluster") or config.getini("testenv_cluster"),
        cluster_name=config.getoption("testenv_cluster_name") or config.getini("testenv_cluster_name"),
        namespace=config.getoption("testenv_namespace") or config.getini("testenv_namespace"),
        kubeconfig=config.getoption("testenv_kubeconfig"),
        context=config.getoption("testenv_context"),
        connect=connect,
        operator=operator,
        keep=bool(config.getoption("testenv_keep")),
        timeout=timeout,
        wait_teardown=bool(
            config.getoption("testenv_wait_teardown") or config.getini("testenv_wait_teardown")
        ),
    )


def _nothing_will_run(config: pytest.Config) -> bool:
    """Collection, plans and listings run no test: they must create nothing (IDEs collect often)."""
    option = config.option
    return bool(
        getattr(option, "collectonly", False)
        or getattr(option, "setupplan", False)
        or getattr(option, "showfixtures", False)
        or getattr(option, "show_fixtures_per_test", False)
        or getattr(option, "markers", False)
    )


class Controller:
    """The run's once-only part, in the xdist controller or the only process (like xdist's DSession).

    Nothing is created when the plugin is configured. The environment is set up once it is
    known that tests will run: after collection without xdist, after the first worker collected
    a test with it. What makes nothing new (an existing cluster, the operator) is started ahead,
    at the session's start. Workers wait for it in their `testenv` fixture; a set-up that failed
    for a reason other than the user's input makes their tests error with that cause.
    """

    def __init__(self, config: pytest.Config, options: RunOptions, reuse_idle: float | None) -> None:
        self.config = config
        self.options = options
        self.reuse_idle = reuse_idle
        self.session: Session | None = None
        self.slots = Slots(options.workers)
        self.started = False
        self.planned: list[dict[str, str]] = []
        path = _timeline_path(config)
        self.timeline = timeline.Timeline(path) if path is not None else None
        #: Set-up taken ahead while xdist starts its workers (see `_start_ahead`), what it failed
        #: with, and the lines it reported: shown once tests are known to run, from this thread.
        self._ahead: threading.Thread | None = None
        self._ahead_done = threading.Event()
        self._ended = threading.Event()
        self._ahead_failed: BaseException | None = None
        self._held: list[str] = []

    def report(self, line: str) -> None:
        if self._ahead is not None and threading.current_thread() is self._ahead:
            self._held.append(line)  # shown if tests run, not in the middle of xdist's start
            return
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"testenv: {line}")

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if _nothing_will_run(self.config):
            return
        try:
            self.session = self._session()
        except TestEnvError as exc:  # e.g. a cache others may write to: the user's to fix, not a crash
            raise pytest.UsageError(f"kube-testenv: {exc}") from exc
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
        self.planned = self._plan()
        if self.planned and not self.config.pluginmanager.hasplugin("dsession"):
            os.environ.update(self.planned[0])  # this process collects and runs the tests itself
        self._ahead = threading.Thread(target=self._start_ahead, name="testenv-ahead", daemon=True)
        self._ahead.start()

    def _start_ahead(self) -> None:
        """What makes nothing new (`Session.start_ahead`: the cluster and operator of a run's own
        set-up, a reused run's exchange with its keeper), while xdist starts its workers and they
        collect: at -n 4 on 2 cores that took 4-6 s before `start` could begin, and 1-2 s on a rerun."""
        assert self.session is not None
        try:
            self.session.start_ahead()
        except BaseException as exc:  # `start` raises it, as if it had failed there
            self._ahead_failed = exc
        finally:
            self._ahead_done.set()
        # The operator dies when the thread that started it ends (PR_SET_PDEATHSIG follows the
        # forking thread, not the process): this one stays until the run is torn down.
        self._ended.wait()

    def _join_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead_done.wait()

    def _plan(self) -> list[dict[str, str]]:
        """Each worker's variables from the run's local-port plan, reserved now (see RunSession.plan);
        [] for a reused environment (its keeper planned it) or where the plan cannot be made yet
        (set-up reports why, once it runs)."""
        if self.session is None:
            return []
        try:
            return self.session.plan()
        except (TestEnvError, ValueError):
            return []

    def _session(self) -> Session:
        # The set-up's machinery and the reuse keeper's are loaded here, in the controller only:
        # an xdist worker imports this plugin too, and needs neither (its start is on the clock).
        from testenv_harness.frontends import reuse
        from testenv_harness.run.session import RunSession

        if self.reuse_idle is None:
            return RunSession(self.options, self.report)
        name = reuse.keeper_name(self.options)
        claim = reuse.Claim.take(name)
        if claim is None:
            self.report(
                f"reuse: another run holds keeper {name!r}; this run sets up an environment of its own"
            )
            return RunSession(self.options, self.report)
        return reuse.ReuseSession(self.options, claim, self.reuse_idle, self.report)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if self.session is None:
            return
        slot, reused = self.slots.take(node.gateway.id)
        variables = self.planned[slot] if slot < len(self.planned) else {}
        node.workerinput[_WORKERINPUT_KEY] = json.dumps(
            {
                "run_dir": str(self.session.run_dir),
                "slot": slot,
                "reused": reused,
                "variables": variables,
                "keeper": _keeper(self.session),
            }
        )

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        self.slots.release(node.gateway.id)
        if self.timeline is not None:
            self.timeline.add_workeroutput(getattr(node, "workeroutput", None) or {})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.timeline is None or self.session is None:
            return
        node = getattr(report, "node", None)
        worker_id = str(node.gateway.id) if node is not None else ""
        slot = next((s for s, holder in self.slots.holders.items() if holder == worker_id), 0)
        self.timeline.report(report, slot, worker_id)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if ids and self.session is not None and _worker_needs(self.session.run_dir, node.gateway.id):
            self.start()

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if self.config.pluginmanager.hasplugin("dsession"):
            return
        if any(_needs(item) for item in session.items):
            self.start()
            if self.session is not None and self.session.handoff is not None:
                self.session.wait_reported(self.options.timeout)

    def start(self) -> None:
        if self.started or self.session is None:
            return
        self.started = True
        self._join_ahead()
        for line in self._held:
            self.report(line)
        began = time.time()
        try:
            if self._ahead_failed is not None:
                raise self._ahead_failed
            self.session.start()
            self._note_set_up(began, "")
        except ValueError as exc:  # the user's manifest or options: theirs to fix
            self._note_set_up(began, "failed")
            self.report(f"set-up failed: {exc}")
            self.report(self.session.stop())
            raise pytest.UsageError(f"kube-testenv could not set up the run: {exc}") from exc
        except TestEnvError as exc:  # cluster, operator, timeouts: every test errors with the cause
            self._note_set_up(began, "failed")
            self.report(f"set-up failed: {exc}")
            publish_failure(self.session.run_dir, str(exc))
            self.report(self.session.stop())

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.finish()

    def _note_set_up(self, began: float, outcome: str) -> None:
        """A session that records no steps of its own (a reused environment's) is one step here."""
        if self.timeline is not None and not hasattr(self.session, "timeline"):
            name = "claim the kept environment" if self.session and self.session.keeper else "set-up"
            self.timeline.add(
                [timeline.event(None, "run", "set-up", name, began, time.time(), outcome=outcome)]
            )

    def finish(self) -> None:
        self._join_ahead()
        if self.session is None:
            return
        current, self.session = self.session, None
        began = time.time()
        try:
            summary = current.stop()
        finally:
            self._ended.set()
            self._write_timeline(current, began)
        if summary and self.started:
            self.report(summary)
        current.remove_run_dir()

    def _write_timeline(self, session: Session, teardown_began: float) -> None:
        """The page and its JSON, once the run is torn down (also when no test needed the environment)."""
        if self.timeline is None:
            return
        events: list[timeline.Event] = list(getattr(session, "timeline", None) or [])
        if self.started and not any(e.get("kind") == "teardown" for e in events):
            name = "release the kept environment" if session.keeper else "teardown"
            events.append(timeline.event(None, "run", "teardown", name, teardown_began, time.time()))
        self.timeline.add(events)
        own = self.config.stash.get(_WORKER_EVENTS, None)  # without xdist this process was the worker
        if own is not None:
            self.timeline.add_worker(own.as_dict())
        handoff = session.handoff
        self.timeline.info.update(
            workers=self.options.workers,
            name=handoff.name if handoff is not None else "",
            cluster=f"{handoff.provider} {self.options.cluster_name}" if handoff is not None else "",
        )
        try:
            page, events_file = self.timeline.write()
        except OSError as exc:
            self.report(f"could not write the timeline to {self.timeline.path}: {exc}")
            return
        self.report(f"timeline: {page} (events: {events_file})")


def _keeper(session: Session | None) -> str:
    """The reuse keeper whose environment (and data plane) `session` uses, "" for a run's own."""
    return session.keeper if session is not None else ""


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    config.addinivalue_line(
        "markers", "testenv: this test needs kube-testenv's environment (see testenv_tests)"
    )
    if workerinput is not None:
        if _WORKERINPUT_KEY in workerinput:
            worker = json.loads(workerinput[_WORKERINPUT_KEY])
            config.stash[_WORKER] = worker
            # Before this worker collects: modules that build a client at import see its endpoints.
            os.environ.update(worker.get("variables") or {})
        return
    if not _active(config):
        if config.getoption("testenv_keep") or config.getoption("testenv_manifest"):
            raise pytest.UsageError("kube-testenv options were given without --testenv (or `testenv = true`)")
        return
    _log_lines(config)  # a bad value stops the run before anything is made
    controller = Controller(config, _options(config), _reuse_idle(config))
    config.stash[_CONTROLLER] = controller
    config.pluginmanager.register(controller, "testenv-controller")


def pytest_unconfigure(config: pytest.Config) -> None:
    controller = config.stash.get(_CONTROLLER, None)
    if controller is not None:
        controller.finish()  # a no-op when the session finished normally


def _this_worker(config: pytest.Config) -> tuple[Path, int, bool]:
    """The run folder to read the handoff from, this process's slot, and whether it was used before."""
    worker = config.stash.get(_WORKER, None)
    if worker is not None:
        return Path(worker["run_dir"]), int(worker["slot"]), bool(worker["reused"])
    controller = config.stash.get(_CONTROLLER, None)
    if controller is None or controller.session is None:
        raise LookupError
    return controller.session.run_dir, 0, False


@pytest.fixture(scope="session")
def testenv(request: pytest.FixtureRequest) -> Iterator[TestEnv]:
    """This worker's own services: `testenv.url("redis")`, `testenv.restart("redis")`, ..."""
    try:
        run_dir, slot, reused = _this_worker(request.config)
    except LookupError:
        pytest.fail(
            "kube-testenv is not enabled: run pytest with --testenv, or set `testenv = true` in the ini file"
        )
    timeout = _timeout(request.config)
    events = _worker_events(request.config)
    began = time.time()
    handoff = receive(run_dir, timeout)
    if events is not None:
        events.span(slot, "waiting for the run's set-up", began)
    env = TestEnv(handoff, slot)  # its API client is made on first use, if ever
    env.connect()
    # A crashed worker held this slot, or an earlier run the environment: start from clean
    # services, not their leftovers.
    if reused or handoff.reused:
        began = time.time()
        env.reset_all()
        if events is not None:
            events.span(slot, "resetting every service (used before)", began)
    if events is not None:
        events.connected(env)
    lines = _log_lines(request.config)
    if lines:
        services = [service.name for service in env.services()]
        logs = env.logs(_dataplane_dir(request.config))
        failure_logs.watch(request.config, failure_logs.Watcher(logs, env.worker, lines, services))
    yield env
    began = time.time()
    env.close()
    if events is not None:
        events.span(slot, "closing the forwards", began)


def _worker_events(config: pytest.Config) -> timeline.WorkerEvents | None:
    """This process's worker events, while a timeline is asked for (None otherwise)."""
    if _timeline_path(config) is None:
        return None
    if _WORKER_EVENTS not in config.stash:
        config.stash[_WORKER_EVENTS] = timeline.WorkerEvents()
    return config.stash[_WORKER_EVENTS]


def _dataplane_dir(config: pytest.Config) -> Path | None:
    """Where the local data plane writes its host processes' output when it is not this run's: a
    reuse keeper's (the keeper's run folder). None: the run's own folder (the handoff's)."""
    worker = config.stash.get(_WORKER, None)
    controller = config.stash.get(_CONTROLLER, None)
    if worker is not None:
        keeper = str(worker.get("keeper") or "")
    else:
        keeper = _keeper(controller.session if controller is not None else None)
    if not keeper:
        return None
    try:
        state = runstate.load(keeper)
    except TestEnvError:
        return None
    if state is None or state.handoff is None:
        return None
    return Path(str(state.handoff["run_dir"])) / "dataplane"


@pytest.fixture(autouse=True)
def _testenv_autostart(request: pytest.FixtureRequest) -> None:
    """With kube-testenv on, connect (once, the fixture is the session's) before the first test
    that needs the environment, so its variables are true for every such test."""
    config = request.config
    if config.stash.get(_WORKER, None) is None and config.stash.get(_CONTROLLER, None) is None:
        return
    if _needs(request.node):
        env: TestEnv = request.getfixturevalue("testenv")
        _record_where(request.node, env)
        failure_logs.mark(request.node)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report gets its worker's services: their state and what they wrote."""
    report = yield
    failure_logs.attach(item, report)
    return report


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """On an xdist worker, once its fixtures are torn down: its timeline events go to the
    controller with the worker's output."""
    events = session.config.stash.get(_WORKER_EVENTS, None)
    workeroutput = getattr(session.config, "workeroutput", None)
    if events is not None and workeroutput is not None:
        workeroutput[timeline.WORKEROUTPUT_KEY] = json.dumps(events.as_dict())


def _record_where(item: pytest.Item, env: TestEnv) -> None:
    """The test's worker namespace and its services' endpoints as the test's properties: JUnit
    XML carries them (`<property>`), so a CI page showing a failed test shows where it ran."""
    item.user_properties.append(("testenv_namespace", env.namespace))
    item.user_properties.append(("testenv_worker", str(env.worker)))
    for service in env.services():
        item.user_properties.append((f"testenv_url_{service.name}", env.url(service.name)))


# -- which tests need the environment -----------------------------------------------------------

_NEEDS_FOLDER = "needs"


_SELECTION = pytest.StashKey[tuple[bool, list[Path]]]()


def _selection(config: pytest.Config) -> tuple[bool, list[Path]]:
    """(every test needs it, the paths whose tests need it) from --testenv-tests / testenv_tests,
    read once per session (it is asked for every test)."""
    if _SELECTION not in config.stash:
        config.stash[_SELECTION] = _read_selection(config)
    return config.stash[_SELECTION]


def _read_selection(config: pytest.Config) -> tuple[bool, list[Path]]:
    given = config.getoption("testenv_tests") or []
    base = Path(config.invocation_params.dir)  # a path on the command line is the shell's
    if not given:
        given = config.getini("testenv_tests") or []
        base = (config.inipath or config.rootpath).parent
    if not given or "all" in given:
        return True, []
    return False, [(base / entry).resolve() for entry in given if entry != "marked"]


def _needs(item: pytest.Item) -> bool:
    """Whether this test needs the environment: every test by default; with testenv_tests, those
    under its paths, and always those marked `testenv` or using the `testenv` fixture."""
    everything, paths = _selection(item.config)
    if everything or item.get_closest_marker("testenv") is not None:
        return True
    if "testenv" in getattr(item, "fixturenames", ()):
        return True
    where = Path(str(item.path)).resolve()
    return any(where == path or where.is_relative_to(path) for path in paths)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """On an xdist worker: record whether its selected tests need the environment, before xdist
    reports the collection to the controller, which starts the environment only if one does."""
    worker = session.config.stash.get(_WORKER, None)
    if worker is None:
        return
    folder = Path(worker["run_dir"]) / _NEEDS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    worker_id = str(getattr(session.config, "workerinput", {}).get("workerid", ""))
    needed = any(_needs(item) for item in session.items)
    (folder / worker_id).write_text("1" if needed else "0")


def _worker_needs(run_dir: Path, worker_id: str) -> bool:
    """What an xdist worker recorded at its collection's end (needed if it recorded nothing)."""
    try:
        return (run_dir / _NEEDS_FOLDER / worker_id).read_text() != "0"
    except OSError:
        return True
