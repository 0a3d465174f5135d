"""`testenv fault SERVICE TOXIC --worker I [--set NAME=VALUE ...] [--for SECONDS]`: a network fault
on one worker's forward of one service, for runners other than pytest (the plugin's tests call
`testenv.fault(...)` in their own process).

The forwards of a CLI run live in the process that holds it (`testenv run`, `testenv up
--forward`) or in `testenv forward --worker I`; each serves fault commands for the workers it
forwards on a socket in the run's private folder (worker/fault_control.py,
fault_sockets.py). Without --for a fault stays until `testenv fault --clear` or the run's end; with
--for it ends after SECONDS, on Ctrl-C, and if this command is killed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from testenv_harness.frontends import cli_runs
from testenv_harness.ground.errors import TestEnvError
from testenv_harness.run import runstate
from testenv_harness.run.runstate import RunState
from testenv_harness.tunnel.toxics import TOXICS, parse_settings, parse_toxic
from testenv_harness.worker.fault_wire import ControlClient
from testenv_harness.worker.network_faults import DOWN


class NotForwardedError(TestEnvError):
    """No process forwards that worker, so none takes its faults."""


def _say(message: str) -> None:
    print(f"testenv: {message}", file=sys.stderr, flush=True)


def _text(fault: dict[str, Any]) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in fault.items() if k not in ("service", "toxic"))
    return f"{fault['service']} {fault['toxic']}" + (f" ({settings})" if settings else "")


def _connect(state: RunState, number: int) -> ControlClient:
    try:
        return ControlClient(runstate.fault_socket(state, number))
    except OSError as exc:
        if state.forwarded:
            why = (
                f"run {state.name!r} forwards every worker in its process {state.pid}, whose fault socket "
                f"does not answer ({exc.strerror}): is it stopping? `testenv status` says"
            )
        else:
            why = (
                f"no process forwards worker {number} of run {state.name!r}: start `testenv forward "
                f"--run {state.name} --worker {number} &` (or the run with `testenv up --forward`), then "
                "apply the fault"
            )
        raise NotForwardedError(why) from exc


def _worker(args: argparse.Namespace) -> int:
    if args.worker is not None:
        return int(args.worker)
    mine = os.environ.get("TESTENV_WORKER", "")
    if not mine.isdigit():
        raise ValueError("say which worker with --worker I (from 0, as the worker namespaces' -wI)")
    return int(mine)


def _check(args: argparse.Namespace) -> dict[str, str]:
    """What the command asks, checked before anything is sent (ToxicError naming the field)."""
    if args.clear or args.list:
        if args.toxic or args.set or args.seconds is not None:
            raise ValueError("--clear and --list take at most a SERVICE: drop the toxic, --set and --for")
        return {}
    if not args.service or not args.toxic:
        raise ValueError(
            f"say which service and which toxic, e.g. `testenv fault redis latency --worker 1 --set "
            f"latency=300` (toxics: {', '.join(TOXICS)}, {DOWN})"
        )
    if args.seconds is not None and args.seconds <= 0:
        raise ValueError(f"--for {args.seconds}: give the seconds the fault lasts, e.g. --for 30")
    settings = parse_settings(args.set)
    if args.toxic == DOWN:
        if settings:
            raise ValueError(f"down takes no --set (given: {', '.join(settings)})")
    else:
        parse_toxic(args.toxic, settings)
    return settings


def cmd_fault(args: argparse.Namespace) -> int:
    settings = _check(args)
    state = runstate.find(args.run)
    number = _worker(args)
    state.environment_of(number)  # a worker of the run, and the run is ready
    control = _connect(state, number)
    try:
        if args.list:
            for fault in control.ask({"op": "list"})["faults"]:
                if args.service in (None, fault["service"]):
                    print(_text(fault), flush=True)
            return 0
        if args.clear:
            cleared = control.ask({"op": "clear", "service": args.service})["cleared"]
            _say(f"worker {number}: {cleared} fault(s) ended")
            return 0
        request = {"op": "add", "service": args.service, "toxic": args.toxic, "settings": settings}
        hold = args.seconds is not None
        fault = control.ask(request | {"hold": hold})["fault"]
        if not hold:
            _say(
                f"worker {number}: {_text(fault)} until `testenv fault --clear {args.service} "
                f"--worker {number}` or the run's end"
            )
            return 0
        _say(f"worker {number}: {_text(fault)} for {args.seconds:g}s")
        try:
            time.sleep(args.seconds)
        except KeyboardInterrupt:
            _say(f"interrupted: ending worker {number}'s {args.service} {args.toxic}")
            raise
        control.ask({"op": "release"})
        _say(f"worker {number}: {args.service} {args.toxic} ended")
        return 0
    finally:
        control.close()  # a held fault ends with its connection, whatever happened


def add_parser(sub: Any) -> None:
    fault = sub.add_parser(
        "fault",
        help="inject a network fault into one worker's forward of a service (Toxiproxy's toxics, or down)",
        description="Apply a toxic to worker I's forward of SERVICE, in the process that forwards it; no "
        "other worker notices. Toxics and attributes are Toxiproxy's: "
        + "; ".join(f"{kind} ({', '.join(attributes)})" for kind, attributes in TOXICS.items())
        + "; every toxic also takes stream=upstream|downstream (default downstream) and toxicity=0..1. "
        "down refuses new connections and cuts open ones.",
        **cli_runs.example("testenv fault redis latency --worker 1 --set latency=300 --for 30"),
    )
    cli_runs.add_run_choice(fault)
    fault.add_argument("service", nargs="?", help="the service's name in the manifest")
    fault.add_argument("toxic", nargs="?", help=f"{', '.join(TOXICS)} or {DOWN}")
    fault.add_argument("--worker", type=int, metavar="I", help="from 0 (default: $TESTENV_WORKER)")
    fault.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="an attribute, stream or toxicity"
    )
    fault.add_argument(
        "--for",
        dest="seconds",
        type=float,
        metavar="SECONDS",
        help="end the fault after SECONDS (and on Ctrl-C); without it, it lasts until --clear",
    )
    fault.add_argument(
        "--clear", action="store_true", help="end the worker's faults (of SERVICE only, if given)"
    )
    fault.add_argument("--list", action="store_true", help="print the worker's faults in force")
    fault.set_defaults(func=cmd_fault)
