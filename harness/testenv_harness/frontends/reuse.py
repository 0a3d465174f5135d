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
  environment of its own, as without reuse. Only the lock counts: the PID the file names is
  for people.
- **Checked**: a run claims what the API server shows, not what a state file says: the keeper's
  TestEnvironment is there, the same object, and Ready; else the run ends that keeper and sets
  up afresh, in one line. The keeper reads the API server for the claiming run, in the answer
  that hands out clean services (keeper.py), so a rerun's own process never loads a Kubernetes
  client. Between runs the keeper checks its environment too (`EnvironmentWatch`): gone from
  the cluster, or the cluster unreachable, for some seconds (a re-created local cluster, a
  `kubectl delete`), it tears down what it owns and exits.
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
from typing import Any

import yaml

from testenv_api import GROUP, PLURAL, VERSION, Phase
from testenv_api.status import workers_from_status
from testenv_harness.frontends import keeper
from testenv_harness.ground import files, k8s, kube
from testenv_harness.ground.errors import ClusterError
from testenv_harness.ground.files import hold_lock
from testenv_harness.ground.waiting import WaitTimeoutError, wait_for
from testenv_harness.run import runstate
from testenv_harness.run.options import RunOptions
from testenv_harness.run.runstate import RunState
from testenv_harness.worker.handoff import Handoff, publish

#: Seconds between a keeper's checks of its claim (a released environment is reset this soon).
CHECK_SECONDS = 0.5
#: Seconds between a keeper's reads of its TestEnvironment.
WATCH_SECONDS = 2.0
#: A keeper exits once its environment has been gone (404, another object, being deleted) this long,
GONE_SECONDS = 5.0
#: or once its cluster has not answered this long (a restart of the API server takes less).
UNREACHABLE_SECONDS = 30.0
#: Seconds one read of the TestEnvironment may take.
READ_TIMEOUT = 5.0
#: Seconds a claiming run waits for a kept environment that is there but not Ready (a pod restarting).
CLAIM_READY_SECONDS = 30.0
#: Tries, 50 ms apart, before a claim counts as another run's (a keeper's look holds it for an instant).
_CLAIM_TRIES = 5
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
        for attempt in range(_CLAIM_TRIES):
            fd = hold_lock(_claim_path(name))
            if fd is not None:
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)  # for people: only the lock counts
                return cls(name, fd)
            if attempt < _CLAIM_TRIES - 1:
                time.sleep(0.05)
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the lock
            self._fd = None


def claimed(name: str) -> bool:
    """Whether a process holds keeper `name`'s claim: its lock, not a PID the file names (a PID is
    used again once its process is gone). A claimer that meets this look retries (`Claim.take`)."""
    return files.lock_held(_claim_path(name))


class EnvironmentGoneError(ClusterError):
    """A kept environment, or its cluster, is no longer there: the message says which, and what now."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        #: The cluster did not answer (it may come back), rather than said the object is gone.
        self.unreachable = unreachable


def read_environment(handoff: Handoff, uid: str, timeout: float = READ_TIMEOUT) -> dict[str, Any]:
    """The kept TestEnvironment as the API server has it now; EnvironmentGoneError if it is gone
    (404, another object of its name, being deleted) or its cluster does not answer."""
    where = f"{handoff.namespace}/{handoff.name}"
    api: k8s.client.ApiClient | None = None
    try:
        api = kube.api_client(handoff.kubeconfig_path, handoff.context or None)
        body: dict[str, Any] = k8s.client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, handoff.namespace, PLURAL, handoff.name, _request_timeout=timeout
        )
    except k8s.ApiException as exc:
        if exc.status == 404:
            raise EnvironmentGoneError(
                f"environment {where} is gone from the cluster (404: deleted, or the cluster was re-created)"
            ) from exc
        raise EnvironmentGoneError(
            f"cannot read environment {where} ({exc.status} {exc.reason}: {kube.said(exc)})", unreachable=True
        ) from exc
    except Exception as exc:  # refused, timed out, no kubeconfig any more: the cluster is not there
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise EnvironmentGoneError(
            f"cannot reach the cluster of environment {where} ({reason})", unreachable=True
        ) from exc
    finally:
        if api is not None:
            api.close()
    meta = body.get("metadata") or {}
    if uid and meta.get("uid") != uid:
        raise EnvironmentGoneError(f"environment {where} is another object now (made again under its name)")
    if meta.get("deletionTimestamp"):
        raise EnvironmentGoneError(f"environment {where} is being deleted")
    return body


def _not_ready(body: dict[str, Any], workers: int) -> tuple[str, bool] | None:
    """Why an environment cannot serve `workers` workers now, and whether that is final; None if it can."""
    status = body.get("status") or {}
    phase = status.get("phase") or Phase.PENDING
    if phase in (Phase.FAILED, Phase.TERMINATING):
        return f"is {phase}: {status.get('message') or 'no message'}", True
    ready = {w.index for w in workers_from_status(status) if w.phase == Phase.READY}
    missing = [str(index) for index in range(workers) if index not in ready]
    if phase != Phase.READY or missing:
        return f"is {phase}, worker(s) {', '.join(missing) or 'all'} not Ready", False
    return None


def claimable_status(handoff: Handoff, uid: str, workers: int, wait: float | None = None) -> dict[str, Any]:
    """The kept environment's status, as the API server shows it now, if it can serve `workers`
    workers: there, the same object, and Ready (waiting up to `wait` for one not Ready yet, a pod
    restarting). keeper.NotClaimableError saying why if it cannot (gone, its cluster silent,
    failed, or not Ready in time)."""
    deadline = time.monotonic() + (CLAIM_READY_SECONDS if wait is None else wait)
    while True:
        try:
            body = read_environment(handoff, uid)
        except EnvironmentGoneError as exc:
            raise keeper.NotClaimableError(str(exc)) from exc
        problem = _not_ready(body, workers)
        if problem is None:
            return dict(body.get("status") or {})
        why, final = problem
        if final or time.monotonic() >= deadline:
            raise keeper.NotClaimableError(f"environment {handoff.namespace}/{handoff.name} {why}")
        time.sleep(0.5)


def claim_check(handoff: Handoff, uid: str) -> keeper.Check:
    """A keeper's check of its environment for a claiming run (keeper.KeeperService)."""
    return lambda workers: claimable_status(handoff, uid, workers)


class EnvironmentWatch:
    """A keeper's look at its own environment: `gone()` says why it is gone once it has been gone
    (or its cluster silent) long enough, so one failed read does not end a keeper."""

    def __init__(self, handoff: Handoff, uid: str, every: float = WATCH_SECONDS) -> None:
        self.handoff = handoff
        self.uid = uid
        self.every = every
        self._next = 0.0
        self._failing_since: float | None = None

    def gone(self) -> str | None:
        """Why the environment is gone, or None while it is there (or has not been gone for long)."""
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.every
        try:
            read_environment(self.handoff, self.uid)
        except EnvironmentGoneError as exc:
            since = self._failing_since = self._failing_since or now
            grace = UNREACHABLE_SECONDS if exc.unreachable else GONE_SECONDS
            return str(exc) if now - since >= grace else None
        self._failing_since = None
        return None


def keep_while_claimed(
    name: str,
    idle: float,
    report: Callable[[str], None],
    watch: EnvironmentWatch | None = None,
    service: keeper.KeeperService | None = None,
) -> Claim | None:
    """Return once keeper `name` has gone `idle` seconds without a claim, or once `watch` finds its
    environment gone (the keeper's loop). Meanwhile `service` resets, while no run holds the
    environment, what the last run used.

    Returns the keeper's own claim, to hold while it tears down: a run arriving meanwhile finds
    the keeper claimed and makes an environment of its own, instead of claiming a dying one.
    None when the environment went while a run held the claim: that run finds it gone itself.
    """
    last = time.monotonic()
    while True:
        time.sleep(CHECK_SECONDS)
        if watch is not None and (why := watch.gone()) is not None:
            report(f"{why}: keeper {name!r} tears down what it holds and exits; the next run sets up afresh")
            return Claim.take(name)
        if claimed(name):
            last = time.monotonic()
            continue
        if service is not None:
            service.tidy()
        if time.monotonic() - last >= idle and (own := Claim.take(name)) is not None:
            report(f"no run claimed {name!r} for {idle:.0f}s: tearing it down")
            return own


def forget(name: str, own: Claim | None) -> None:
    """Remove a keeper's manifest once it has ended (its log stays, as `up`'s does), and its claim
    file while it holds the claim: a file a run still holds a lock on stays, or a third run could
    claim a new file of that name meanwhile."""
    folder = runstate.folder()
    (folder / f"{name}.yaml").unlink(missing_ok=True)
    if own is not None:
        (folder / f"{name}.claim").unlink(missing_ok=True)


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
        #: The environment's status as claimed: the workers' endpoints.
        self._status: dict[str, Any] = {}
        #: The keeper's state and why it cannot serve (None: it can), from `start_ahead`.
        self._ahead: tuple[RunState, str | None] | None = None

    @property
    def keeper(self) -> str:
        """The keeper whose environment this run uses (`Session.keeper`)."""
        return self.claim.name

    def start_ahead(self) -> None:
        """The claim's exchange with a Ready keeper of enough workers, while the test runner starts
        its workers and collects: the keeper checks its environment and hands out clean services.
        Replacing or starting a keeper waits for `start`: a run that needs no environment after
        all takes nothing down and makes nothing."""
        state = runstate.load(self.claim.name)
        if (
            state is not None
            and state.alive
            and state.phase == runstate.READY
            and state.forwarded
            and state.workers >= self.options.workers
        ):
            self._ahead = (state, self._unusable(state))

    def start(self) -> Handoff:
        name = self.claim.name
        ahead, self._ahead = self._ahead, None
        state = ahead[0] if ahead is not None else runstate.load(name)
        if state is not None and state.alive and state.phase == runstate.READY:
            if state.workers < self.options.workers:
                self.report(
                    f"keeper {name!r} has {state.workers} worker(s), this run needs more: replacing it"
                )
                _stop(state)
                state = None
            elif (why := ahead[1] if ahead is not None else self._unusable(state)) is not None:
                self.report(
                    f"keeper {name!r} (process {state.pid}): {why}; "
                    "ending it and setting up a fresh environment"
                )
                _stop(state)
                state = None
            else:
                self.reused = True
                self.report(
                    f"reusing environment {state.handoff_object().name} of keeper {name!r} "
                    f"(process {state.pid}): {self.options.workers} of its {state.workers} worker(s), "
                    "each reset before its first test"
                )
        elif state is not None and state.alive:  # starting or failed, yet still there: start afresh
            _stop(state)
            state = None
        if not self.reused:  # none, replaced, or one whose process is gone (killed, its state left)
            state = self._start_keeper()
            if (why := self._unusable(state)) is not None:
                raise ClusterError(f"the new keeper {name!r} cannot serve this run: {why}")
        assert state is not None
        self._keeper = state
        # The run folder is this run's: barrier files and the like must not outlive it. A keeper
        # that forwards its workers (every keeper of this version) handed out clean services.
        self.handoff = dataclasses.replace(
            state.handoff_object(),
            run_dir=str(self.run_dir),
            reused=self.reused and not state.forwarded,
            forwarded=state.forwarded,
            status=self._status if state.forwarded else None,
            fault_sockets=str(runstate.fault_socket(state, 0).parent) if state.forwarded else "",
        )
        publish(self.run_dir, self.handoff)
        return self.handoff

    def _unusable(self, state: RunState) -> str | None:
        """Why the keeper's environment cannot serve this run, as the API server shows it now (gone,
        its cluster silent, failed, or not Ready within CLAIM_READY_SECONDS); None if it can.

        A keeper that forwards its workers checks for the run, and hands out clean services in the
        same answer, so this process loads no Kubernetes client (keeper.py). One of an older
        version, which does not check, is reported unusable; one that does not forward is checked
        from here (its workers reset their own services)."""
        if not state.forwarded:
            try:
                self._status = claimable_status(state.handoff_object(), state.uid, self.options.workers)
            except keeper.NotClaimableError as exc:
                return str(exc)
            return None
        try:
            handed = keeper.claim(state.name, self.options.workers)
        except keeper.KeeperSilentError as exc:
            # Stopped or hung: say what the API server shows, if that is the reason, else this.
            try:
                claimable_status(state.handoff_object(), state.uid, self.options.workers, wait=0)
            except keeper.NotClaimableError as gone:
                return str(gone)
            return str(exc)
        except ClusterError as exc:  # NotClaimableError (why it cannot serve), or no answer
            return str(exc)
        if handed.status is None:
            return "it is of an older version, which does not check its environment for a run"
        self._status = handed.status
        if handed.reset >= 0.1:
            self.report(f"keeper {state.name!r} took {handed.reset:.1f}s to reset the last run's services")
        return None

    def _start_keeper(self) -> RunState:
        name, folder = self.claim.name, runstate.folder()
        manifest, log = folder / f"{name}.yaml", folder / f"{name}.log"
        files.write_atomic(manifest, yaml.safe_dump(self.options.manifest))
        argv = [
            sys.executable,
            "-m",
            "testenv_harness",
            "up",
            "--foreground",
            "--forward",  # the keeper holds every worker's forwards between runs
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
        with files.open_log(log) as handle:
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
            with os.fdopen(files.open_private(log, os.O_RDONLY), "rb") as handle:
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
    """End a keeper (as `testenv down` does: SIGTERM, then its teardown) and wait for it. Only the
    process that wrote `state` is signalled, never one that got its PID since; a stopped one
    (SIGSTOP, Ctrl-Z) is continued, so that it can tear down."""
    if not state.signal(signal.SIGTERM):
        return
    state.signal(signal.SIGCONT)
    with contextlib.suppress(WaitTimeoutError):
        wait_for(lambda: not state.alive, timeout=timeout, what=f"{state.name!r} to end", interval=0.1)
