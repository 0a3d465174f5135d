"""Where a CLI run is on this machine: one state file per run name, under the cache.

One process holds a run (`testenv run`, or the background process `testenv up` starts): it
owns the run session, its operator and data plane. Every other command (`env`, `forward`,
`status`, `down`, `restart`, `exec`) finds that run by name through its state file, which the
holder writes when it starts, again when every worker is ready, and removes after teardown.
A state file whose holder is gone belongs to a run killed with -9: `testenv sweep` reclaims it.

The folder is this user's alone (files.private_dir), state files are read without following
links, and a holder counts as alive only while its PID still names the process that wrote the
file (its start time is recorded with it): a PID used again by another process is never signalled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from testenv_harness.ground import children, files
from testenv_harness.ground.children import alive as alive  # re-exported: callers ask runstate.alive
from testenv_harness.ground.errors import TestEnvError
from testenv_harness.ground.files import locked, write_atomic
from testenv_harness.worker.handoff import Handoff

STARTING, READY, FAILED = "starting", "ready", "failed"
#: On every holder's command line (`python -m testenv_harness ...`, `testenv run ...`): how a
#: state file written before start times were recorded is told from a PID used again.
HOLDER_MARKER = "testenv"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")


class UnknownRunError(TestEnvError):
    """No run of that name is up on this machine (or none at all)."""


class NoSuchWorkerError(TestEnvError):
    """A worker number outside the run's 0..N-1."""


@dataclasses.dataclass
class RunState:
    name: str
    pid: int  # the holder
    command: str  # "run" or "up"
    workers: int
    cluster: str  # "<provider> <cluster name>", for messages
    operator: str  # where the operator runs: "subprocess" (the holder's) or "cluster"
    forwarded: bool  # the holder forwards every worker (`testenv run`, `testenv up --forward`)
    phase: str = STARTING
    message: str = ""  # why set-up failed
    log: str = ""  # the holder's progress, for a holder in the background
    uid: str = ""  # the TestEnvironment's
    handoff: dict[str, Any] | None = None
    #: Worker number ("0".."N-1") -> that worker's variables under their plain names.
    environments: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    #: The holder's start time (children.start_time); 0 in files of older versions.
    started: int = 0

    def __post_init__(self) -> None:
        if not self.started and self.pid == os.getpid():  # a state this process holds: record when it began
            self.started = children.start_time(self.pid) or 0

    @property
    def alive(self) -> bool:
        """Whether the holder still runs: its PID, and the same process that wrote this state."""
        return children.is_ours(self.pid, self.started, HOLDER_MARKER)

    def signal(self, sig: signal.Signals) -> bool:
        """Signal the holder, if it still runs (never a process that got its PID since); whether sent."""
        return children.signal_ours(self.pid, self.started, sig, HOLDER_MARKER)

    def handoff_object(self) -> Handoff:
        if self.handoff is None:
            raise UnknownRunError(f"run {self.name!r} is still starting: wait for `testenv up` to return")
        return Handoff(**self.handoff)

    def environment_of(self, worker: int) -> dict[str, str]:
        """Worker `worker`'s variables (numbered from 0, like the plugin's and the namespaces')."""
        if not 0 <= worker < self.workers:
            raise NoSuchWorkerError(
                f"run {self.name!r} has workers 0-{self.workers - 1} (numbered from 0), not {worker}: ask "
                f"for one of those, or start the run with --workers {max(worker + 1, 1)}"
            )
        self.require_ready()
        return self.environments[str(worker)]

    def require_ready(self) -> None:
        if self.phase == FAILED:
            raise UnknownRunError(f"run {self.name!r} failed to set up: {self.message}")
        if not self.alive:
            raise UnknownRunError(
                f"run {self.name!r} is gone: its process {self.pid} was killed; "
                "`testenv sweep` deletes what it left"
            )
        if self.phase != READY:
            raise UnknownRunError(
                f"run {self.name!r} is still starting: wait for `testenv up` to return (or `testenv status`)"
            )


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(
            f"run name {name!r}: use lower-case letters, digits, '-' and '.' (at most 63), e.g. checkout-e2e"
        )
    return name


def folder() -> Path:
    """Where the state files are: this user's alone (UnsafeFileError otherwise, saying what to do)."""
    return files.private_dir(files.cache_root() / "runs")


def path_of(name: str) -> Path:
    return folder() / f"{name}.json"


def fault_socket(state: RunState, worker: int) -> Path:
    """Where the process that forwards worker `worker` of the run takes fault commands
    (worker/fault_control.py), in a folder of the run's own (this user's alone)."""
    return files.private_dir(folder() / f"{state.name}.{state.pid}.faults") / f"{worker}.sock"


def _locked() -> AbstractContextManager[None]:
    return locked(folder() / ".lock")


def save(state: RunState) -> None:
    write_atomic(path_of(state.name), json.dumps(dataclasses.asdict(state), indent=1))


def claim(state: RunState) -> None:
    """Record a new run; UnknownRunError-free, but TestEnvError if a live run has that name."""
    with _locked():
        current = load(state.name)
        if current is not None and current.alive:
            raise TestEnvError(
                f"a run named {state.name!r} is already up (process {current.pid}): "
                f"`testenv down --run {state.name}` first, or pick another name with --run"
            )
        save(state)


def load(name: str) -> RunState | None:
    """Run `name`'s state, None if there is none (or it is half-written or unreadable);
    UnsafeFileError if the file is a symbolic link or not this user's plain file."""
    try:
        data = json.loads(files.read_private(path_of(name)))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    # Another kube-testenv version may share the cache: fields this one does not know are left out
    # (a newer holder's), and a state missing fields this one needs is not a run it can act on.
    known = {field.name for field in dataclasses.fields(RunState)}
    try:
        return RunState(**{key: value for key, value in data.items() if key in known})
    except TypeError:
        return None


def remove(name: str, pid: int) -> None:
    """Forget run `name`, unless another holder claimed the name meanwhile."""
    with _locked():
        current = load(name)
        if current is not None and current.pid == pid:
            path_of(name).unlink(missing_ok=True)


def every() -> list[RunState]:
    found = [load(entry.stem) for entry in sorted(folder().glob("*.json"))]
    return [state for state in found if state is not None]


def find(name: str | None) -> RunState:
    """The run called `name`, else $TESTENV_RUN's, else the only one up; a one-line error otherwise."""
    name = name or os.environ.get("TESTENV_RUN")
    runs = every()
    if name:
        found = next((state for state in runs if state.name == name), None)
        if found is not None:
            return found
        others = f" (up here: {', '.join(s.name for s in runs)})" if runs else ""
        raise UnknownRunError(
            f"no run named {name!r} on this machine{others}: start it with "
            f"`testenv up -f env.yaml --run {name}`, or check the name with `testenv status`"
        )
    live = [state for state in runs if state.alive]
    if len(live) == 1:
        return live[0]
    if not live:
        raise UnknownRunError(
            "no run is up on this machine: start one with `testenv up -f env.yaml --workers 4` "
            "(or `testenv run ... -- CMD`)"
        )
    raise UnknownRunError(
        f"{len(live)} runs are up ({', '.join(s.name for s in live)}): say which with --run NAME "
        "or TESTENV_RUN"
    )
