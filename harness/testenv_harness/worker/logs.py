"""What a worker's service pods did: each one's state (ready, restarts, last termination), the
lines it wrote after a `Mark`, and when it was created, scheduled, started and became ready.

On the `local` cluster a pod runs nothing: its service is a host process of the data plane,
whose output is `<data plane folder>/<namespace>/<pod>/process.log` (a Kafka broker's own log,
`kafka.log`, beside it). Those files have no timestamps, so a mark remembers their sizes and
the lines after it are what was appended since. Elsewhere a pod's log comes through the API
(`pods/log`, which the chart's worker-access role grants; a refusal is said, not raised), from
the mark's time on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from testenv_api import LABEL_SERVICE
from testenv_harness.ground import k8s, kube

#: A host process's output files, in the order they are shown.
HOST_LOGS = ("process.log", "kafka.log")
#: At most this much of a host log is read back from its end: lines beyond it are left out.
READ_LIMIT = 1 << 20


@dataclasses.dataclass(frozen=True)
class Mark:
    """A moment to read logs from: its wall-clock time (0: the beginning) and each host log
    file's size then (a file it does not name is read from its start)."""

    at: float
    offsets: Mapping[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PodState:
    """One service pod as the API server has it (and, on the local cluster, its host process)."""

    service: str
    pod: str
    phase: str
    ready: bool
    restarts: int
    #: Why the last container run ended ("OOMKilled (exit 137) at 12:00:01"), "" if none did.
    last_termination: str = ""
    #: Why a container waits now (CrashLoopBackOff, ImagePullBackOff, ...), "" if none does.
    waiting: str = ""
    deleting: bool = False
    #: Wall-clock times (seconds since the epoch) of its creation, scheduling, start and readiness.
    created: float | None = None
    scheduled: float | None = None
    started: float | None = None
    ready_at: float | None = None
    #: When its last container run ended (for the previous container's log).
    terminated_at: float | None = None
    containers: tuple[str, ...] = ()
    #: On the local cluster: the host process's folder, and its PID if one runs there (0: none).
    workdir: Path | None = None
    host_pid: int = 0

    def describe(self) -> str:
        """`ready, 0 restarts` and whatever else is worth a glance (one line)."""
        if self.deleting:
            parts = ["being deleted"]
        else:
            parts = ["ready" if self.ready else f"not ready (phase {self.phase})"]
        parts.append(f"{self.restarts} restart{'' if self.restarts == 1 else 's'}")
        if self.waiting:
            parts.append(f"waiting: {self.waiting}")
        if self.last_termination:
            parts.append(f"last terminated: {self.last_termination}")
        if self.workdir is not None:
            parts.append(
                f"host process {self.host_pid} running"
                if self.host_pid
                else "no host process runs for it (it exited, or the data plane stopped it)"
            )
        return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class LogLines:
    """What one pod (or its host process) wrote after a mark: the last lines, and what was left out."""

    service: str
    pod: str
    source: str  # "host process log <path>", "pod log", "pod log of the previous container"
    lines: tuple[str, ...] = ()
    #: Lines written after the mark but before those shown (-1: some, how many is not known).
    left_out: int = 0
    #: Why nothing could be read (a refusal, a file gone with its pod), "" if it was read.
    note: str = ""


def _time(value: Any) -> float | None:
    """An RFC 3339 timestamp of the API as seconds since the epoch (None for none)."""
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return datetime.datetime.fromisoformat(str(value)).timestamp()
    return None


def clock(at: float) -> str:
    """A wall-clock time as a log line shows it: 12:00:01.234 (local time)."""
    return datetime.datetime.fromtimestamp(at).strftime("%H:%M:%S.%f")[:-3]


def _termination(terminated: Mapping[str, Any]) -> str:
    reason = terminated.get("reason") or "terminated"
    text = f"{reason} (exit {terminated.get('exitCode', '?')})"
    finished = _time(terminated.get("finishedAt"))
    if finished is not None:
        text += f" at {clock(finished)}"
    message = str(terminated.get("message") or "").strip()
    return f"{text}: {message.splitlines()[-1]}" if message else text


def host_process(workdir: Path) -> int:
    """The PID of a process of this user working in `workdir` (how the data plane starts each
    service), 0 if none runs there."""
    wanted = str(workdir)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "cwd") == wanted:
                    return int(entry.name)
    return 0


def pod_state(pod: Mapping[str, Any], host_root: Path | None = None) -> PodState:
    """A pod object (a dict as the API server sends it) as a `PodState`."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    name = meta["name"]
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    statuses = status.get("containerStatuses") or []
    ready = (conditions.get("Ready") or {}).get("status") == "True"
    started = [_time((s.get("state") or {}).get("running", {}).get("startedAt")) for s in statuses]
    last = [(s.get("lastState") or {}).get("terminated") for s in statuses]
    ended = [t for t in last if t]
    waiting = [
        f"{w.get('reason')}" + (f" ({w['message']})" if w.get("message") else "")
        for s in statuses
        if (w := (s.get("state") or {}).get("waiting")) and w.get("reason")
    ]
    workdir = host_root / meta["namespace"] / name if host_root is not None else None
    return PodState(
        service=(meta.get("labels") or {}).get(LABEL_SERVICE) or name.rsplit("-", 2)[0],
        pod=name,
        phase=status.get("phase") or "Unknown",
        ready=ready and not meta.get("deletionTimestamp"),
        restarts=sum(int(s.get("restartCount") or 0) for s in statuses),
        last_termination="; ".join(_termination(t) for t in ended),
        waiting="; ".join(waiting),
        deleting=bool(meta.get("deletionTimestamp")),
        created=_time(meta.get("creationTimestamp")),
        scheduled=_time((conditions.get("PodScheduled") or {}).get("lastTransitionTime")),
        started=min((s for s in started if s is not None), default=None),
        ready_at=_time((conditions.get("Ready") or {}).get("lastTransitionTime")) if ready else None,
        terminated_at=max((t for e in ended if (t := _time(e.get("finishedAt"))) is not None), default=None),
        containers=tuple(c["name"] for c in spec.get("containers") or []),
        workdir=workdir,
        host_pid=host_process(workdir) if workdir is not None and workdir.is_dir() else 0,
    )


def _tail(lines: list[str], tail: int) -> tuple[tuple[str, ...], int]:
    """The last `tail` lines (every line for tail < 0) and how many were left out before them."""
    if tail < 0 or len(lines) <= tail:
        return tuple(lines), 0
    return tuple(lines[len(lines) - tail :]), len(lines) - tail


def read_from(path: Path, offset: int) -> tuple[list[str], bool]:
    """The lines of `path` after byte `offset` (from its start if it is shorter now: a new file),
    at most READ_LIMIT bytes of them from its end; and whether earlier ones were left out."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        start = offset if 0 <= offset <= size else 0
        cut = size - start > READ_LIMIT
        handle.seek(size - READ_LIMIT if cut else start)
        data = handle.read()
    if cut:
        data = data.partition(b"\n")[2]  # the first line is likely cut short
    return data.decode(errors="replace").splitlines(), cut


class ServiceLogs:
    """The state and log lines of the service pods in one worker namespace."""

    def __init__(
        self,
        core: k8s.client.CoreV1Api | Callable[[], k8s.client.CoreV1Api],
        namespace: str,
        host_root: Path | None = None,
        grant: str = "",
    ) -> None:
        #: The API, or what makes it on first use (a test that never fails needs none).
        self._core = core
        self.namespace = namespace
        #: The local data plane's folder (its host processes' output), None on a cluster that runs pods.
        self.host_root = host_root
        #: What grants reading pods/log here, for a refusal's message.
        self.grant = grant

    @property
    def core(self) -> k8s.client.CoreV1Api:
        if callable(self._core):
            self._core = self._core()
        return self._core

    @property
    def _host_folder(self) -> Path | None:
        return self.host_root / self.namespace if self.host_root is not None else None

    def mark(self) -> Mark:
        """Now, and each host log's size now: no API call."""
        offsets: dict[str, int] = {}
        folder = self._host_folder
        if folder is not None:
            with contextlib.suppress(OSError):
                for pod in folder.iterdir():
                    for name in HOST_LOGS:
                        with contextlib.suppress(OSError):
                            offsets[str(pod / name)] = (pod / name).stat().st_size
        return Mark(time.time(), offsets)

    def pods(self, service: str | None = None) -> list[PodState]:
        """The service pods of this namespace (of `service` only, if given), by service and age."""
        selector = f"{LABEL_SERVICE}={service}" if service else LABEL_SERVICE
        response = self.core.list_namespaced_pod(
            self.namespace, label_selector=selector, _preload_content=False
        )
        pods: list[dict[str, Any]] = kube_json(response)["items"]
        states = [pod_state(pod, self.host_root) for pod in pods]
        return sorted(states, key=lambda p: (p.service, p.created or 0.0, p.pod))

    def lines(self, since: Mark, pods: list[PodState], tail: int) -> list[LogLines]:
        """What each of `pods` wrote after `since`, its last `tail` lines (every line for tail < 0).

        On the local cluster, a host log the mark did not know (a pod made since) is read whole.
        """
        found: list[LogLines] = []
        for pod in pods:
            if pod.workdir is not None:
                found += self._host_lines(pod, since, tail)
            else:
                found += self._api_lines(pod, since, tail)
        return found

    def _host_lines(self, pod: PodState, since: Mark, tail: int) -> list[LogLines]:
        assert pod.workdir is not None
        found = []
        for name in HOST_LOGS:
            path = pod.workdir / name
            source = f"host process log {path}"
            try:
                lines, cut = read_from(path, since.offsets.get(str(path), 0))
            except FileNotFoundError:
                if name == HOST_LOGS[0]:
                    note = "no host process log (the data plane has not started it, or stopped it)"
                    found.append(LogLines(pod.service, pod.pod, source, note=note))
                continue
            except OSError as exc:
                found.append(LogLines(pod.service, pod.pod, source, note=f"cannot read it: {exc}"))
                continue
            shown, left_out = _tail(lines, tail)
            found.append(LogLines(pod.service, pod.pod, source, shown, -1 if cut else left_out))
        return found

    def _api_lines(self, pod: PodState, since: Mark, tail: int) -> list[LogLines]:
        # Seconds since the mark, rounded up, and one more: a line the mark's second wrote stays in.
        seconds = max(1, math.ceil(time.time() - since.at) + 1) if since.at > 0 else None
        found = []
        for container in pod.containers or ("",):
            runs = [False]
            if pod.terminated_at is not None and pod.terminated_at >= since.at:
                runs.insert(0, True)  # a container that ended during the window: its last run too
            for previous in runs:
                source = "pod log" + (f" ({container})" if len(pod.containers) > 1 else "")
                if previous:
                    source += " of the previous container run"
                found.append(self._api_read(pod, container, source, seconds, tail, previous))
        return found

    def _api_read(
        self, pod: PodState, container: str, source: str, seconds: int | None, tail: int, previous: bool
    ) -> LogLines:
        try:
            response = self.core.read_namespaced_pod_log(
                pod.pod,
                self.namespace,
                container=container or None,
                since_seconds=seconds,
                tail_lines=tail + 1 if tail >= 0 else None,
                previous=previous,
                _preload_content=False,
            )
            lines = bytes(response.data).decode(errors="replace").splitlines()
        except k8s.ApiException as exc:
            if exc.status == 403:
                note = (
                    f"the cluster refused to read its log ({exc.status} {exc.reason}: {kube.said(exc)})"
                    + (f"; {self.grant}" if self.grant else "")
                )
            else:
                note = f"cannot read its log: {exc.status} {exc.reason}: {kube.said(exc)}"
            return LogLines(pod.service, pod.pod, source, note=note)
        except k8s.HTTPError as exc:
            return LogLines(pod.service, pod.pod, source, note=f"cannot read its log: {exc}")
        if tail >= 0 and len(lines) > tail:
            return LogLines(pod.service, pod.pod, source, tuple(lines[len(lines) - tail :]), -1)
        return LogLines(pod.service, pod.pod, source, tuple(lines))


def kube_json(response: Any) -> dict[str, Any]:
    """The body of a call made with `_preload_content=False`."""
    body: dict[str, Any] = json.loads(response.data)
    return body
