"""`testenv logs SERVICE --worker I [--since DURATION] [--tail N] [--run NAME]`: one worker's
service, its pods' state and the lines they wrote, as a failed test's report shows them
(failure_logs.py), for a run the CLI holds (`testenv up`, `testenv run`, a reuse keeper).

On the local cluster a service's output is its host process's, which has no timestamps: a pod
started before DURATION ago may show older lines too (the heading says so).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import Any

from testenv_harness.frontends import cli_runs
from testenv_harness.frontends.failure_logs import lines_text, state_text
from testenv_harness.run import runstate
from testenv_harness.worker.connection import WorkerConnection
from testenv_harness.worker.logs import Mark, clock

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")
DEFAULT_TAIL = 50


def parse_duration(text: str) -> float:
    """Seconds in `90`, `90s`, `5m`, `1h30m` or `1.5m` (ValueError otherwise)."""
    text = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    found = _DURATION.match(text)
    if not text or found is None:
        raise ValueError(f"--since {text!r}: give a duration such as 90s, 5m or 1h30m")
    hours, minutes, seconds = (float(part or 0) for part in found.groups())
    return hours * 3600 + minutes * 60 + seconds


def _worker(args: argparse.Namespace, workers: int, run: str) -> int:
    number = args.worker
    if number is None:
        mine = os.environ.get("TESTENV_WORKER", "")
        if not mine.isdigit():
            raise ValueError("say which worker with --worker I (from 0, as the worker namespaces' -wI)")
        number = int(mine)
    if not 0 <= number < workers:
        raise runstate.NoSuchWorkerError(
            f"run {run!r} has workers 0-{workers - 1} (numbered from 0), not {number}"
        )
    return int(number)


def cmd_logs(args: argparse.Namespace) -> int:
    state = runstate.find(args.run)
    number = _worker(args, state.workers, state.name)
    if args.tail < -1:
        raise ValueError(f"--tail {args.tail}: give a number of lines, or -1 for every line")
    since = parse_duration(args.since) if args.since else None
    logs = WorkerConnection(state.handoff_object(), number).logs()
    pods = logs.pods(args.service)
    if not pods:
        known = sorted({pod.service for pod in logs.pods()})
        raise ValueError(
            f"worker {number} of run {state.name!r} has no pod of service {args.service!r}"
            + (f" (its services: {', '.join(known)})" if known else " (no service pods at all)")
        )
    mark = Mark(time.time() - since if since is not None else 0.0)
    window = f"since {clock(mark.at)} (the last {args.since})" if since is not None else "since it started"
    out = [f"worker {number} of run {state.name!r}, namespace {logs.namespace}:", *state_text(pods)]
    for entry in logs.lines(mark, pods, args.tail):
        pod = next(p for p in pods if p.pod == entry.pod)
        if since is not None and pod.workdir is not None and (pod.created or 0) < mark.at:
            out.append(
                f"(its host process started before that, and its output has no timestamps: "
                f"lines from before {clock(mark.at)} may show too)"
            )
        out += lines_text(entry, window)
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def add_parser(sub: Any) -> None:
    logs = sub.add_parser(
        "logs",
        help="one worker's service: its pods' state and the lines they wrote",
        description="The state of worker I's pods of SERVICE (ready, restarts, last termination) and the "
        "last lines each wrote: through the API (pods/log), or on the local cluster its host process's "
        "output.",
        **cli_runs.example("testenv logs kafka --worker 1 --since 5m"),
    )
    logs.add_argument("service", help="the service's name in the manifest")
    logs.add_argument("--worker", type=int, metavar="I", help="from 0 (default: $TESTENV_WORKER)")
    logs.add_argument("--since", metavar="DURATION", help="only lines of the last DURATION (90s, 5m, 1h30m)")
    logs.add_argument(
        "--tail",
        type=int,
        default=DEFAULT_TAIL,
        metavar="N",
        help="the last N lines of each pod (default: %(default)s; -1: every line)",
    )
    cli_runs.add_run_choice(logs)
    logs.set_defaults(func=cmd_logs)
