"""The `testenv` commands for test runners other than pytest: run, up, env, forward, status, down...

`run` does everything at once; the others are its steps one at a time. Progress goes to stderr,
what a script reads (variables, names, status) to stdout. Every command below `run` and `up`
finds its run by --run NAME, $TESTENV_RUN, or as the only run up on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from testenv_api import GROUP, MAX_WORKERS, PLURAL, VERSION
from testenv_harness.frontends import exports, reuse, supervise
from testenv_harness.frontends.command_timeline import CommandTimeline
from testenv_harness.frontends.fault_sockets import FaultSockets
from testenv_harness.frontends.holder import Holder
from testenv_harness.frontends.keeper import KeeperService
from testenv_harness.ground import files, kube
from testenv_harness.ground.errors import TestEnvError
from testenv_harness.ground.files import hold_lock
from testenv_harness.ground.localports import bindable
from testenv_harness.ground.waiting import WaitTimeoutError, wait_for
from testenv_harness.run import runstate
from testenv_harness.run.options import (
    CLUSTER_CHOICES,
    CONNECT_MODES,
    RunOptions,
    load_manifest,
    services_manifest,
)
from testenv_harness.run.runstate import RunState
from testenv_harness.run.session import RunSession
from testenv_harness.worker.testenv import TestEnv

Say = Callable[[str], None]


def say(message: str) -> None:
    print(f"testenv: {message}", file=sys.stderr, flush=True)


def _out(text: str) -> None:
    print(text, flush=True)


# -- signals ------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the current step like Ctrl-C does, so `finally` blocks tear down."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """Teardown is not cut short by a second Ctrl-C; a `kill -9` still ends it (expiry reclaims)."""

    def note(signum: int, frame: FrameType | None) -> None:
        say("still tearing down; `kill -9` would leave the environment to expire by heartbeat")

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- options ------------------------------------------------------------------------------------


def _run_options(args: argparse.Namespace) -> tuple[str, RunOptions]:
    if args.file and args.service:
        raise ValueError("give either -f FILE or --service, not both")
    if args.file:
        manifest = load_manifest(Path(args.file))
    elif args.service:
        manifest = services_manifest(args.service)
    else:
        raise ValueError(
            "say which services each worker gets: -f env.yaml, or --service redis --service kafka"
        )
    workers = args.workers
    if workers is None:
        workers = int((manifest.get("spec") or {}).get("workers") or 1)
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"--workers {workers}: a run has 1 to {MAX_WORKERS} workers")
    if args.timeout <= 0:
        raise ValueError(f"--timeout {args.timeout}: give the seconds a worker may take, e.g. 300")
    name = runstate.check_name(args.run or (manifest.get("metadata") or {}).get("name") or "run")
    options = RunOptions(
        workers=workers,
        manifest=manifest,
        provider=args.cluster,
        cluster_name=args.cluster_name,
        namespace=args.namespace,
        kubeconfig=args.kubeconfig,
        context=args.context,
        connect=args.connect,
        operator=args.operator,
        keep=args.keep,
        timeout=args.timeout,
        wait_teardown=args.wait_teardown,
    )
    return name, options


def _testenv_on_path(run_dir: Path | None, env: dict[str, str]) -> None:
    """Let the command call `testenv` (restart, env, status) with this very installation."""
    if run_dir is None:
        return
    folder = run_dir / "bin"
    folder.mkdir(exist_ok=True)
    script = folder / "testenv"
    script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m testenv_harness "$@"\n')
    script.chmod(0o755)
    env["PATH"] = f"{folder}{os.pathsep}{env.get('PATH', '')}"


# -- run ----------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    if not args.cmd:
        raise ValueError("say what to run after --, e.g. testenv run --workers 4 -- ginkgo -p --procs 4")
    if args.timeline_specs and not args.timeline:
        raise ValueError("--timeline-specs draws a report's specs on the timeline: give --timeline FILE too")
    name, options = _run_options(args)
    holder = Holder(name, options, command="run", forward=True, report=say)
    command = shlex.join(args.cmd)
    page = None
    if args.timeline:
        page = CommandTimeline(
            Path(args.timeline), Path(args.timeline_specs) if args.timeline_specs else None, command
        )
    status = 1
    try:
        try:
            with _signals_interrupt():
                holder.start()
        finally:
            if page is not None:
                page.set_up(holder.session)
        env = {**os.environ, **holder.variables()}
        _testenv_on_path(holder.run_dir, env)
        say(f"running {command} with {options.workers} worker(s)")
        started = time.monotonic()
        if page is not None:
            page.command_started()
        try:
            status, signum = supervise.run_command(args.cmd, env, say)
        except FileNotFoundError:
            say(f"{args.cmd[0]}: command not found")
            return 127
        except PermissionError:
            say(f"{args.cmd[0]}: permission denied")
            return 126
        finally:
            if page is not None:
                page.command_ended(status, holder.envs)
        stopped = f" ({signal.Signals(signum).name})" if signum else ""
        say(f"the command exited with status {status}{stopped} after {time.monotonic() - started:.1f}s")
    except KeyboardInterrupt:
        say("interrupted during set-up")
        status = 130
    finally:
        with _shielded():
            try:
                holder.stop()
            finally:
                if page is not None:
                    page.write(name, options.workers, f"{options.provider} {options.cluster_name}", say)
    return status


# -- up -----------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    name, options = _run_options(args)
    if args.foreground:
        return _hold(name, options, args.forward, args.idle_exit)
    current = runstate.load(name)
    if current is not None and current.alive:
        raise TestEnvError(
            f"a run named {name!r} is already up (process {current.pid}): `testenv down --run {name}` "
            "first, or pick another name with --run"
        )
    log = runstate.folder() / f"{name}.log"
    argv = [sys.executable, "-m", "testenv_harness", *args.argv, "--foreground", "--run", name]
    with files.open_log(log) as handle:
        holder = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=handle, start_new_session=True
        )
    say(f"starting run {name!r} in the background (process {holder.pid}, log {log})")
    try:
        return _wait_up(name, holder, log)
    except KeyboardInterrupt:
        say("interrupted: tearing the run down")
        holder.terminate()
        with _shielded():
            _follow(log, lambda: holder.poll() is not None, timeout=300)
        return 130


def _hold(name: str, options: RunOptions, forward: bool, idle_exit: float | None = None) -> int:
    """`up --foreground`: hold the run in this process until SIGTERM, SIGINT or SIGHUP, or, with
    `idle_exit` (a reuse keeper, reuse.py), until no process has claimed it for that many seconds
    or its environment is gone from the cluster."""
    holder = Holder(
        name, options, command="up", forward=forward, report=say, log=runstate.folder() / f"{name}.log"
    )
    own: reuse.Claim | None = None
    service: KeeperService | None = None
    try:
        with _signals_interrupt():
            holder.start()
            _out(name)
            if idle_exit is None:
                while True:
                    time.sleep(3600)
            handoff, uid = holder.state.handoff_object(), holder.state.uid
            if forward:
                service = KeeperService(name, holder.envs, say, reuse.claim_check(handoff, uid))
            watch = reuse.EnvironmentWatch(handoff, uid)
            own = reuse.keep_while_claimed(name, idle_exit, say, watch, service)
    except KeyboardInterrupt:
        say("stopping")
    finally:
        with _shielded():
            if service is not None:
                service.close()
            try:
                holder.stop()
            finally:
                if idle_exit is not None:
                    own = own or reuse.Claim.take(name)
                    reuse.forget(name, own)
                if own is not None:
                    own.release()
    return 0


def _follow(log: Path, done: Callable[[], bool], timeout: float, offset: int = 0) -> int:
    """Copy what `log` gains to stderr until `done()` (or `timeout`); returns the new offset."""
    deadline = time.monotonic() + timeout
    with os.fdopen(files.open_private(log, os.O_RDONLY), "rb") as handle:
        handle.seek(offset)
        while True:
            finished = done()
            chunk = handle.read()
            if chunk:
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
            if finished or time.monotonic() > deadline:
                return handle.tell()
            time.sleep(0.2)


def _wait_up(name: str, holder: subprocess.Popen[bytes], log: Path) -> int:
    def settled() -> bool:
        state = runstate.load(name)
        mine = state is not None and state.pid == holder.pid
        return holder.poll() is not None or (mine and state is not None and state.phase != runstate.STARTING)

    _follow(log, settled, timeout=float("inf"))
    state = runstate.load(name)
    if holder.poll() is None and state is not None and state.phase == runstate.READY:
        _out(name)
        return 0
    with contextlib.suppress(subprocess.TimeoutExpired):
        holder.wait(300)  # a failed set-up tears down what it made before it exits
    _follow(log, lambda: True, timeout=0, offset=log.stat().st_size)
    message = state.message if state is not None and state.message else f"see {log}"
    raise TestEnvError(f"run {name!r} did not come up: {message}")


# -- env, forward, exec -------------------------------------------------------------------------


def _worker_number(args: argparse.Namespace) -> int:
    if args.worker is not None:
        return int(args.worker)
    mine = os.environ.get("TESTENV_WORKER")
    if mine and mine.isdigit():
        return int(mine)
    raise ValueError(
        "say which worker with --worker I (from 0, like pytest-xdist's gw0 and the worker namespaces' "
        "-w0: Ginkgo's process N is worker N-1)"
    )


def _worker_variables(state: RunState, number: int) -> dict[str, str]:
    return {
        **state.environment_of(number),
        "TESTENV_RUN": state.name,
        "TESTENV_WORKERS": str(state.workers),
    }


def cmd_env(args: argparse.Namespace) -> int:
    state = runstate.find(args.run)
    if args.worker is None:
        state.require_ready()
        variables = exports.run_variables(state.name, state.environments)
    else:
        variables = _worker_variables(state, int(args.worker))
    _out(exports.render(variables, args.format))
    return 0


def cmd_forward(args: argparse.Namespace) -> int:
    state = runstate.find(args.run)
    number = _worker_number(args)
    variables = _worker_variables(state, number)
    env = TestEnv(state.handoff_object(), number)
    sockets: FaultSockets | None = None
    try:
        with _signals_interrupt():
            env.wait_and_forward()
            sockets = FaultSockets(state, [env])  # `testenv fault --worker I` reaches them here
            _out(exports.render(variables, args.format))
            say(f"forwarding worker {number} of run {state.name!r} until stopped (SIGTERM or Ctrl-C)")
            while True:
                time.sleep(1)
                current = runstate.load(state.name)
                if current is None or current.pid != state.pid or not current.alive:
                    say(f"run {state.name!r} ended: stopping worker {number}'s forwards")
                    return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if sockets is not None:
            sockets.close()
        env.close()


def cmd_exec(args: argparse.Namespace) -> int:
    """Run CMD as the first worker no other `testenv exec` holds (`go test -exec`: one per package)."""
    if not args.cmd:
        raise ValueError("say what to run after --, e.g. go test -p 4 -exec 'testenv exec --' ./...")
    state = runstate.find(args.run)
    state.require_ready()
    number, lock = _claim_worker(state)
    os.set_inheritable(lock, True)  # the lock is held until CMD exits
    env = {**os.environ, **_worker_variables(state, number)}
    try:
        os.execvpe(args.cmd[0], args.cmd, env)
    except FileNotFoundError:
        say(f"{args.cmd[0]}: command not found")
        return 127


def _claim_worker(state: RunState) -> tuple[int, int]:
    folder = files.private_dir(runstate.folder() / f"{state.name}.{state.pid}.slots")
    waited = False
    while True:
        for number in range(state.workers):
            fd = hold_lock(folder / f"{number}.lock")
            if fd is not None:
                return number, fd
        if not waited:
            say(f"all {state.workers} workers of run {state.name!r} are taken: waiting for one")
            waited = True
        time.sleep(0.2)


def cmd_restart(args: argparse.Namespace) -> int:
    state = runstate.find(args.run)
    number = _worker_number(args)
    state.environment_of(number)
    env = TestEnv(state.handoff_object(), number).wait_ready()
    try:
        service = env.service(args.service)
    except KeyError as exc:
        raise ValueError(str(exc.args[0])) from exc
    started = time.monotonic()
    # Probe the local port only where something forwards it (`run`, `up --forward`, `forward`);
    # connecting directly, the Service always answers where it is.
    probe = env.direct or not bindable(service.primary.local_port)
    env.restart(args.service, timeout=args.timeout, probe=probe)
    say(f"worker {number}'s {args.service} restarted in {time.monotonic() - started:.1f}s")
    return 0


# -- status, down, sweep ------------------------------------------------------------------------


def _cluster_view(state: RunState) -> dict[str, Any]:
    """The TestEnvironment's phase and ready workers as the API server has them now."""
    if state.handoff is None or not state.alive:
        return {}
    handoff = state.handoff_object()
    try:
        api = kube.api_client(handoff.kubeconfig_path, handoff.context or None)
        body = client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, handoff.namespace, PLURAL, handoff.name
        )
    except ApiException as exc:
        where = f"{handoff.namespace}/{handoff.name}"
        if exc.status == 404:
            return {
                "error": f"{where} is gone from the cluster (deleted, or the cluster was re-created): "
                f"`testenv down --run {state.name}` ends the run"
            }
        return {"error": f"cannot read {where}: {exc.status} {exc.reason}: {kube.said(exc)}"}
    except Exception as exc:  # any reason the cluster cannot answer is worth one line here
        return {"error": f"cannot read {handoff.namespace}/{handoff.name}: {str(exc).splitlines()[0]}"}
    status = body.get("status") or {}
    return {"phase": status.get("phase", "Pending"), "readyWorkers": status.get("readyWorkers")}


def cmd_status(args: argparse.Namespace) -> int:
    runs = [runstate.find(args.run)] if args.run else runstate.every()
    rows = []
    for state in runs:
        row = dataclasses.asdict(state) | {"alive": state.alive, "cluster_view": _cluster_view(state)}
        rows.append(row)
    if args.output == "json":
        _out(json.dumps(rows, indent=1))
        return 0
    if not rows:
        say("no run on this machine: start one with `testenv up -f env.yaml --workers 4`")
    for row in rows:
        where = f"{row['handoff']['namespace']}/{row['handoff']['name']}" if row["handoff"] else "-"
        held = f"process {row['pid']}" if row["alive"] else f"process {row['pid']} gone (`testenv sweep`)"
        view = row["cluster_view"]
        cluster = view.get("error") or (f"{view['phase']}, {view['readyWorkers']}" if view else "")
        forwards = "forwarded by the run" if row["forwarded"] else "`testenv forward --worker I`"
        _out(
            f"{row['name']}\t{row['phase']}\t{row['workers']} workers\t{held}\t{where}\t{cluster}\t{forwards}"
        )
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state = runstate.find(args.run)
    if not state.signal(signal.SIGTERM):  # gone, or its PID is another process's now: never signalled
        _reclaim(state)
        return 0
    say(f"stopping run {state.name!r} (process {state.pid})")
    log = Path(state.log) if state.log else None
    offset = log.stat().st_size if log is not None and log.exists() else 0

    def gone() -> bool:
        return not state.alive

    if log is not None and log.exists():
        _follow(log, gone, timeout=600, offset=offset)
    else:
        with contextlib.suppress(WaitTimeoutError):
            wait_for(gone, timeout=600, what=f"run {state.name!r} to stop")
    if not gone():
        raise TestEnvError(f"run {state.name!r} (process {state.pid}) did not stop within 600s")
    if log is not None:
        log.unlink(missing_ok=True)  # its lines were just copied to stderr
    say(f"run {state.name!r} is down")
    return 0


def _reclaim(state: RunState) -> None:
    """Delete what a run killed with -9 left: its environment (with an operator while it goes)."""
    if state.handoff is None:
        say(
            f"run {state.name!r} was killed during set-up: an environment it made expires by heartbeat "
            "(the next run in its namespace, or the cluster's operator, deletes it)"
        )
    else:
        handoff = state.handoff_object()
        say(f"run {state.name!r}: process {state.pid} is gone; deleting {handoff.namespace}/{handoff.name}")
        options = RunOptions(
            workers=state.workers, manifest={}, namespace=handoff.namespace, wait_teardown=True
        )
        say(RunSession.reclaim(options, handoff, state.uid, state.operator, say))
    runstate.remove(state.name, state.pid)


def cmd_sweep(args: argparse.Namespace) -> int:
    dead = [state for state in runstate.every() if not state.alive]
    for state in dead:
        _reclaim(state)
    say(f"swept {len(dead)} run(s) whose process was gone" if dead else "nothing to sweep")
    return 0


# -- the parser ---------------------------------------------------------------------------------


def example(text: str) -> dict[str, Any]:
    """A subcommand's help ends with an example (`**example(...)` into add_parser)."""
    return {"epilog": f"example:\n  {text}", "formatter_class": argparse.RawDescriptionHelpFormatter}


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("the environment")
    what.add_argument("-f", "--file", metavar="ENV.yaml", help="the TestEnvironment manifest to apply")
    what.add_argument(
        "--service",
        action="extend",
        nargs="+",
        metavar="NAME[:TYPE]",
        help="instead of a manifest: services each worker gets (redis, kafka, events:kafka, ...)",
    )
    what.add_argument("--workers", type=int, help="parallel workers (default: the manifest's, else 1)")
    what.add_argument("--run", metavar="NAME", help="the run's name (default: the manifest's name)")
    where = parser.add_argument_group("where")
    where.add_argument("--cluster", choices=CLUSTER_CHOICES, default="auto", help="default: %(default)s")
    where.add_argument(
        "--cluster-name", default="testenv", help="local or kind cluster (default: %(default)s)"
    )
    where.add_argument(
        "--namespace",
        default="",
        help="of the TestEnvironment (default: for existing, the kubeconfig context's or the pod's own; "
        "else default)",
    )
    where.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="kubeconfig of an existing cluster (default: $KUBECONFIG, ~/.kube/config, or in a pod its own "
        "ServiceAccount token)",
    )
    where.add_argument(
        "--context", help="kubeconfig context of an existing cluster (default: its current one)"
    )
    where.add_argument(
        "--connect",
        choices=CONNECT_MODES,
        default="auto",
        help="forward: port-forwards through the API server; direct: the Services' DNS names, from a pod "
        "in the cluster (default: %(default)s, direct exactly inside a pod)",
    )
    where.add_argument(
        "--operator",
        choices=("auto", "subprocess", "cluster"),
        default="auto",
        help="run our own, or use the cluster's (default: cluster for existing, else subprocess)",
    )
    where.add_argument("--keep", action="store_true", help="keep the environment afterwards, for debugging")
    where.add_argument(
        "--wait-teardown",
        action="store_true",
        help="return only once the namespaces are deleted (default: they are deleted in the background)",
    )
    where.add_argument(
        "--timeout", type=float, default=300.0, help="seconds each worker may take (default: %(default)s)"
    )


def _add_variables_output(parser: argparse.ArgumentParser) -> None:
    """-o/--output for commands that print variables (--format: the older name)."""
    parser.add_argument(
        "-o",
        "--output",
        "--format",
        dest="format",
        choices=exports.FORMATS,
        default="shell",
        help="shell (for eval), dotenv or json (default: %(default)s)",
    )


def add_run_choice(parser: argparse.ArgumentParser) -> None:
    """--run, for a command that acts on one run the testenv command holds."""
    parser.add_argument("--run", metavar="NAME", help="which run (default: $TESTENV_RUN, or the only one up)")


def add_parsers(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="set up, forward every worker, run CMD with every worker's variables, tear down",
        description="The whole run: cluster, CRD, operator, environment and every worker's forwards; "
        "then CMD with REDIS_URL_0..N-1 and the like (see `testenv env`); teardown when CMD exits, on "
        "Ctrl-C and on SIGTERM. Exits with CMD's status.",
        **example("testenv run -f env.yaml --workers 4 -- ginkgo -p --procs 4"),
    )
    _add_run_options(run)
    seen = run.add_argument_group("the run's timeline")
    seen.add_argument(
        "--timeline",
        metavar="FILE",
        help="write the run's timeline (a row per worker: set-up steps, pods, forwards, the command, "
        "teardown) to FILE, one HTML page that needs no network, and its events to FILE with .json",
    )
    seen.add_argument(
        "--timeline-specs",
        metavar="REPORT",
        help="draw the tests of this Ginkgo JSON report (ginkgo --json-report REPORT) on the timeline, "
        "Ginkgo process P on worker P-1",
    )
    run.set_defaults(func=cmd_run)

    up = sub.add_parser(
        "up",
        help="set a run up in the background and return when every worker is ready",
        description="Set a run up and keep it in a background process until `testenv down`. Prints the "
        "run's name on stdout. Workers are forwarded by `testenv forward --worker I` (or by this "
        "process with --forward).",
        **example("testenv up -f env.yaml --workers 4 && testenv forward --worker 0 &"),
    )
    _add_run_options(up)
    up.add_argument("--forward", action="store_true", help="also forward every worker from the run's process")
    up.add_argument("--foreground", action="store_true", help="hold the run in this process until a signal")
    up.add_argument(
        "--idle-exit",
        type=float,
        metavar="SECONDS",
        help="tear the run down once no test run has claimed it for SECONDS (how the pytest plugin "
        "keeps an environment for reuse)",
    )
    up.set_defaults(func=cmd_up)

    env = sub.add_parser(
        "env",
        help="print a worker's variables (or, without --worker, every worker's, numbered)",
        description="Without --worker: what `testenv run` gives its command (REDIS_URL_0, REDIS_URL_1, "
        "...). With --worker I: worker I's variables under plain names (REDIS_URL, ...).",
        **example('eval "$(testenv env --worker 1)" && redis-cli -u "$REDIS_URL" ping'),
    )
    add_run_choice(env)
    env.add_argument("--worker", type=int, metavar="I", help="worker number, from 0")
    _add_variables_output(env)
    env.set_defaults(func=cmd_env)

    forward = sub.add_parser(
        "forward",
        help="forward one worker's services to its local ports until stopped",
        description="Listen on worker I's planned local ports until SIGTERM, Ctrl-C or the run's end. "
        "Prints the worker's variables once the forwards answer.",
        **example("testenv forward --worker 3 -o json &"),
    )
    add_run_choice(forward)
    forward.add_argument("--worker", type=int, metavar="I", help="from 0 (default: $TESTENV_WORKER)")
    _add_variables_output(forward)
    forward.set_defaults(func=cmd_forward)

    status = sub.add_parser(
        "status",
        help="list the runs on this machine and their environments",
        **example("testenv status -o json"),
    )
    add_run_choice(status)
    status.add_argument("-o", "--output", choices=("text", "json"), default="text")
    status.set_defaults(func=cmd_status)

    down = sub.add_parser(
        "down",
        help="tear a run down (its environment, operator, data plane and forwards)",
        **example("testenv down --run checkout-e2e"),
    )
    add_run_choice(down)
    down.set_defaults(func=cmd_down)

    sweep = sub.add_parser(
        "sweep",
        help="delete what runs killed with -9 left behind",
        description="For every run on this machine whose process is gone, delete its environment now "
        "instead of waiting for its heartbeat to expire.",
        **example("testenv sweep"),
    )
    sweep.set_defaults(func=cmd_sweep)

    restart = sub.add_parser(
        "restart",
        help="restart one service of one worker; no other worker notices",
        **example("testenv restart redis --worker 1"),
    )
    add_run_choice(restart)
    restart.add_argument("service", help="the service's name in the manifest")
    restart.add_argument("--worker", type=int, metavar="I", help="from 0 (default: $TESTENV_WORKER)")
    restart.add_argument("--timeout", type=float, default=120.0, help="seconds (default: %(default)s)")
    restart.set_defaults(func=cmd_restart)

    exec_ = sub.add_parser(
        "exec",
        help="run CMD as the first free worker, with its variables under plain names",
        description="For runners that number nothing (go test -p runs one process per package): each "
        "`testenv exec` takes the lowest worker no other one holds, until CMD exits.",
        **example("testenv run --workers 4 -- go test -p 4 -exec 'testenv exec --' ./..."),
    )
    add_run_choice(exec_)
    exec_.set_defaults(func=cmd_exec)
