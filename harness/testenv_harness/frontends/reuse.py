"""Reusing an environment from one test run to the next (`--testenv-reuse`): the developer loop.

A run with reuse on does not set an environment up itself. It claims a *keeper*: a background
`testenv up --idle-exit SECONDS` process that holds an environment of the same services on the
same cluster and namespace (and owns its operator and data plane, as `testenv up` does). The
first such run starts the keeper; later runs find it Ready and hand it to their workers at once.
At the end a run only releases its claim. The keeper tears the environment down once no run
has claimed it for the idle time, or on `testenv down --run reuse-...`; killed with -9, it takes
its operator and data plane along and the environment expires by heartbeat, as any run's does.

- **Exclusive**: a claim is an exclusive `flock` on `<name>.claim`, held for the run's life (a
  crashed run's lock goes with its process). A run that finds the keeper claimed makes an
  environment of its own, as without reuse.
- **Clean**: every worker of a reused environment resets its services before its first test
  (`Faults.reset`), so no test sees an earlier run's data.
- **Workers**: a keeper with at least as many workers as the run asks for serves it (the
  first ones); one with fewer is replaced by a keeper of the new size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from testenv_harness.ground.children import alive
from testenv_harness.ground.errors import ClusterError
from testenv_harness.ground.files import hold_lock
from testenv_harness.ground.waiting import WaitTimeoutError, wait_for
from testenv_harness.run import runstate
from testenv_harness.run.runstate import RunState
from testenv_harness.run.session import RunOptions
from testenv_harness.worker.handoff import Handoff, publish

#: Seconds a kept environment waits for the next run (testenv_reuse_idle).
DEFAULT_IDLE_SECONDS = 900.0
#: Seconds between a keeper's checks of its claim.
CHECK_SECONDS = 1.0
_SPEC_PER_RUN = ("workers", "portBase")


def keeper_name(options: RunOptions) -> str:
    """The keeper's run name: the same for runs that may share an environment, else different."""
    spec = {k: v for k, v in (options.manifest.get("spec") or {}).items() if k not in _SPEC_PER_RUN}
    what = {
        "name": (options.manifest.get("metadata") or {}).get("name", "run"),
        "spec": spec,
        "where": [
            options.provider,
            options.cluster_name,
            options.namespace,
            options.operator,
            options.kubeconfig,
            options.context,
            options.connect,
        ],
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:10]
    return f"reuse-{digest}"


def _claim_path(name: str) -> Path:
    return runstate.folder() / f"{name}.claim"


class Claim:
    """This process's exclusive claim on keeper `name`, until `release` or this process's end."""

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self._fd: int | None = fd

    @classmethod
    def take(cls, name: str) -> Claim | None:
        """The claim, or None when another live run holds it."""
        fd = hold_lock(_claim_path(name))
        if fd is None:
            return None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return cls(name, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the lock
            self._fd = None


def claimed(name: str) -> bool:
    """Whether a live process holds keeper `name`'s claim (read without locking: no race with a claimer)."""
    with contextlib.suppress(OSError, ValueError):
        text = _claim_path(name).read_text().strip()
        return bool(text) and alive(int(text))
    return False


def keep_while_claimed(name: str, idle: float, report: Callable[[str], None]) -> Claim:
    """Return once keeper `name` has gone `idle` seconds without a claim (the keeper's loop).

    Returns the keeper's own claim, to hold while it tears down: a run arriving meanwhile finds
    the keeper claimed and makes an environment of its own, instead of claiming a dying one.
    """
    last = time.monotonic()
    while True:
        time.sleep(CHECK_SECONDS)
        if claimed(name):
            last = time.monotonic()
        elif time.monotonic() - last >= idle and (own := Claim.take(name)) is not None:
            report(f"no run claimed {name!r} for {idle:.0f}s: tearing it down")
            return own


def forget(name: str) -> None:
    """Remove a keeper's claim and manifest files once it has ended (its log stays, as `up`'s does)."""
    for suffix in (".claim", ".yaml"):
        (runstate.folder() / f"{name}{suffix}").unlink(missing_ok=True)


class ReuseSession:
    """The controller's side of a reused run: a `Session`, as `RunSession` is."""

    def __init__(self, options: RunOptions, claim: Claim, idle: float, report: Callable[[str], None]) -> None:
        self.options = options
        self.claim = claim
        self.idle = idle
        self.report = report
        self.run_dir = Path(tempfile.mkdtemp(prefix="testenv-reuse-"))
        self.handoff: Handoff | None = None
        #: The environment served an earlier run: workers reset their services first.
        self.reused = False
        self._keeper: RunState | None = None
        self._released = False

    def start(self) -> Handoff:
        name = self.claim.name
        state = runstate.load(name)
        if state is not None and state.alive and state.phase == runstate.READY:
            if state.workers >= self.options.workers:
                self.reused = True
                self.report(
                    f"reusing environment {state.handoff_object().name} of keeper {name!r} "
                    f"(process {state.pid}): {self.options.workers} of its {state.workers} worker(s), "
                    "each reset before its first test"
                )
            else:
                self.report(
                    f"keeper {name!r} has {state.workers} worker(s), this run needs more: replacing it"
                )
                _stop(state)
                state = None
        elif state is not None and state.alive:  # starting or failed, yet still there: start afresh
            _stop(state)
            state = None
        if not self.reused:
            state = self._start_keeper()
        assert state is not None
        self._keeper = state
        # The run folder is this run's: barrier files and the like must not outlive it.
        self.handoff = dataclasses.replace(
            state.handoff_object(), run_dir=str(self.run_dir), reused=self.reused
        )
        publish(self.run_dir, self.handoff)
        return self.handoff

    def _start_keeper(self) -> RunState:
        name, folder = self.claim.name, runstate.folder()
        manifest, log = folder / f"{name}.yaml", folder / f"{name}.log"
        manifest.write_text(yaml.safe_dump(self.options.manifest))
        log.write_bytes(b"")
        argv = [
            sys.executable,
            "-m",
            "testenv_harness",
            "up",
            "--foreground",
            "--run",
            name,
            "-f",
            str(manifest),
            f"--workers={self.options.workers}",
            f"--cluster={self.options.provider}",
            f"--cluster-name={self.options.cluster_name}",
            f"--namespace={self.options.namespace}",
            f"--operator={self.options.operator}",
            f"--connect={self.options.connect}",
            *([f"--kubeconfig={self.options.kubeconfig}"] if self.options.kubeconfig else []),
            *([f"--context={self.options.context}"] if self.options.context else []),
            f"--timeout={self.options.timeout}",
            f"--idle-exit={self.idle}",
        ]
        with log.open("ab") as handle:
            keeper = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=handle, start_new_session=True
            )
        self.report(
            f"starting keeper {name!r} (process {keeper.pid}, log {log}); it keeps the environment "
            f"{self.idle:.0f}s after each run"
        )
        state = self._follow(name, keeper, log)
        if state is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                keeper.wait(300)  # a failed set-up tears down what it made before it exits
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise ClusterError(f"the keeper of {name!r} did not come up; the end of its log ({log}):\n{tail}")
        return state

    def _follow(self, name: str, keeper: subprocess.Popen[bytes], log: Path) -> RunState | None:
        """Pass the keeper's progress lines on until it is Ready (its state), or None if it failed."""
        offset = 0

        def settled() -> tuple[RunState | None] | None:
            """(the Ready state,) or (None,) once it failed; None while it is on its way."""
            nonlocal offset
            state = runstate.load(name)
            with log.open("rb") as handle:
                handle.seek(offset)
                lines = handle.read().decode(errors="replace").splitlines(keepends=True)
            for line in lines:
                if not line.endswith("\n"):
                    break  # half a line: the rest comes with the next read
                offset += len(line.encode())
                if line.startswith("testenv: "):  # its progress, not the run name it prints
                    self.report(line.rstrip("\n").removeprefix("testenv: "))
            mine = state is not None and state.pid == keeper.pid
            if mine and state is not None and state.phase == runstate.READY:
                return (state,)
            if keeper.poll() is not None or (mine and state is not None and state.phase == runstate.FAILED):
                return (None,)
            return None

        try:
            (found,) = wait_for(
                settled,
                timeout=self.options.timeout + 300,  # cluster and images on top
                what=f"keeper {name!r} to be Ready",
                interval=0.1,
            )
        except WaitTimeoutError:
            keeper.terminate()
            return None
        return found

    def plan(self) -> list[dict[str, str]]:
        """Nothing planned here: the keeper planned the environment's ports when it made it."""
        return []

    def wait_reported(self, timeout: float) -> None:
        """Nothing to wait for: `start` returned with every worker Ready."""

    def stop(self) -> str:
        """Release the claim; the keeper keeps the environment for the next run."""
        if self._released:
            return ""
        self._released = True
        self.claim.release()
        if self._keeper is None:
            return ""
        name = self.claim.name
        return (
            f"released the environment to the next run: keeper {name!r} (process {self._keeper.pid}) "
            f"keeps it {self.idle:.0f}s; `testenv down --run {name}` ends it now"
        )

    def remove_run_dir(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _stop(state: RunState, timeout: float = 300) -> None:
    """End a keeper (as `testenv down` does: SIGTERM, then its teardown) and wait for it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(state.pid, signal.SIGTERM)
    with contextlib.suppress(WaitTimeoutError):
        wait_for(lambda: not alive(state.pid), timeout=timeout, what=f"{state.name!r} to end", interval=0.1)
