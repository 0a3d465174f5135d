"""What the controller hands every worker, and how: a file in the run's folder.

Workers start before the controller knows whether any test will run, so the environment is
created late and its `Handoff` published as `handoff.json` in the run folder (whose path each
worker gets through xdist's workerinput). A set-up that failed publishes `handoff.failed`
instead, and every worker's tests error with that cause.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from testenv_harness.ground.errors import TestEnvError
from testenv_harness.ground.files import write_atomic
from testenv_harness.ground.waiting import WaitTimeoutError, wait_for

_PUBLISHED = "handoff.json"
_FAILED = "handoff.failed"


#: How workers reach their services: local ports forwarded through the API server, or (from a pod
#: inside the cluster) the Services' DNS names directly.
FORWARD, DIRECT = "forward", "direct"


@dataclasses.dataclass(frozen=True)
class Handoff:
    kubeconfig: str  # "" inside a pod: its ServiceAccount token
    namespace: str  # where the TestEnvironment lives
    name: str  # the TestEnvironment's name
    run_id: str
    run_dir: str  # per-run folder shared by all workers (temp paths, shared cache)
    provider: str  # local | kind | existing
    timeout: float  # seconds a worker waits for its own services
    #: The environment served an earlier run (reuse.py): every worker resets its services first.
    reused: bool = False
    #: The kubeconfig's context ("" for its current one).
    context: str = ""
    connect: str = FORWARD
    #: A reuse keeper forwards every worker and handed out clean services (frontends/keeper.py):
    #: a worker neither forwards nor resets, and takes its endpoints from `status`.
    forwarded: bool = False
    #: The TestEnvironment's status when the run claimed it (with `forwarded`).
    status: dict[str, Any] | None = None
    #: With `forwarded`: the keeper's folder of fault sockets (worker/fault_control.py), one per worker.
    fault_sockets: str = ""

    @property
    def kubeconfig_path(self) -> Path | None:
        return Path(self.kubeconfig) if self.kubeconfig else None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Handoff:
        data: dict[str, Any] = json.loads(text)
        return cls(**data)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)


class SetUpError(TestEnvError):
    """The controller could not set the run up; the message is its cause."""


def publish(run_dir: Path, handoff: Handoff) -> None:
    write_atomic(run_dir / _PUBLISHED, handoff.to_json())


def publish_failure(run_dir: Path, message: str) -> None:
    write_atomic(run_dir / _FAILED, message)


def _published(run_dir: Path) -> Handoff | None:
    if (run_dir / _FAILED).exists():
        raise SetUpError(f"kube-testenv could not set the run up: {(run_dir / _FAILED).read_text()}")
    if (run_dir / _PUBLISHED).exists():
        return Handoff.from_json((run_dir / _PUBLISHED).read_text())
    return None


#: How often a worker looks for the handoff: two stats a look, and on a rerun the handoff comes
#: a moment after the workers start, so a coarser look would add its interval to the first test.
RECEIVE_INTERVAL_SECONDS = 0.02


def receive(run_dir: Path, timeout: float) -> Handoff:
    """The run's handoff once the controller published it; SetUpError with its cause otherwise."""
    try:
        return wait_for(
            lambda: _published(run_dir),
            timeout=timeout,
            what="the run's environment to be set up",
            seen=lambda: f"nothing in {run_dir}",
            interval=RECEIVE_INTERVAL_SECONDS,
        )
    except WaitTimeoutError as exc:
        raise SetUpError(f"{exc}; the controller's output says why") from exc


class Slots:
    """Worker slots: an xdist worker takes the lowest free one and frees it when it goes down.

    A crashed worker's replacement (xdist names it gw2 under -n 2) takes the slot the dead one
    freed, so it reaches an existing worker namespace; `reused` tells it to reset that
    namespace's services first, since the dead worker may have left state behind.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.holders: dict[int, str] = {}
        self.used: set[int] = set()

    def take(self, holder: str) -> tuple[int, bool]:
        free = [slot for slot in range(self.count) if slot not in self.holders]
        if not free:
            held = ", ".join(sorted(self.holders.values()))
            raise TestEnvError(f"no free worker slot for {holder}: all {self.count} are held by {held}")
        slot = free[0]
        self.holders[slot] = holder
        reused = slot in self.used
        self.used.add(slot)
        return slot, reused

    def release(self, holder: str) -> None:
        for slot, name in list(self.holders.items()):
            if name == holder:
                del self.holders[slot]
