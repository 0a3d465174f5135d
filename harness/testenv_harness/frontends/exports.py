"""The variables a CLI run hands to processes of any runner, and the formats they are printed in.

A run's command sees every worker's variables at once, each under its plain name with the
worker's number appended: `REDIS_URL_0`, `REDIS_URL_1`, ... Numbers start at 0 everywhere a user
sees one: the plugin's `TESTENV_WORKER` and `testenv.worker` (pytest-xdist's gw0), the status's
`workers[].index` and the namespaces' `-w0` suffix, `--worker`, these suffixes and messages. A
runner that numbers its processes from 1 (Ginkgo's `GinkgoParallelProcess()`, Jest's
`JEST_WORKER_ID`) subtracts one in its one lookup. A variable that is the
same for every worker is set under its plain name too (so with one worker, `REDIS_URL` works);
with several workers there is no plain `REDIS_URL`, so a process that ignores its number gets
nothing rather than another worker's Redis.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping

from testenv_harness.worker.testenv import TestEnv

FORMATS = ("shell", "dotenv", "json")


def worker_variables(env: TestEnv) -> dict[str, str]:
    """One worker's variables under their plain names: what the plugin exports in that worker."""
    return env.environment()


def run_variables(name: str, workers: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """What `testenv run` adds to its command's environment (and `testenv env` prints)."""
    variables = {"TESTENV_RUN": name, "TESTENV_WORKERS": str(len(workers))}
    shared: dict[str, str] | None = None
    for number, mine in sorted(workers.items(), key=lambda item: int(item[0])):
        own = {k: v for k, v in mine.items() if k != "TESTENV_WORKER"}
        variables.update({f"{key}_{number}": value for key, value in own.items()})
        shared = dict(own) if shared is None else {k: v for k, v in shared.items() if own.get(k) == v}
    return {**(shared or {}), **variables}


#: Characters a dotenv value may hold unquoted (URLs, hosts, ports, paths).
_PLAIN = re.compile(r"[A-Za-z0-9_./:@%+,=?&-]*")


def _dotenv(value: str) -> str:
    """A value as dotenv readers (docker compose, python-dotenv, direnv) take it back: plain when
    it is safe, else double-quoted with backslash, quote and newline escaped, so a newline in a
    value can never add a line (a variable) of its own."""
    if _PLAIN.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def render(variables: Mapping[str, str], fmt: str) -> str:
    """`shell`: export lines for eval; `dotenv`: KEY=value lines; `json`: one object on one line."""
    if fmt == "json":
        return json.dumps(dict(variables), sort_keys=True)
    if fmt == "dotenv":
        return "\n".join(f"{key}={_dotenv(value)}" for key, value in sorted(variables.items()))
    if fmt == "shell":
        return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in sorted(variables.items()))
    raise ValueError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
