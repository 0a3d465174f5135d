"""What the controller hands every worker (through xdist's workerinput): plain JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Handoff:
    kubeconfig: str
    namespace: str  # where the TestEnvironment lives
    name: str  # the TestEnvironment's name
    run_id: str
    run_dir: str  # per-run folder shared by all workers (temp paths, shared cache)
    provider: str  # local | kind | existing
    timeout: float  # seconds a worker waits for its own services

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Handoff:
        data: dict[str, Any] = json.loads(text)
        return cls(**data)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)


def worker_index(workerid: str | None) -> int:
    """pytest-xdist's gw3 is worker 3; no xdist (or -n 0) is worker 0."""
    if not workerid:
        return 0
    digits = workerid.removeprefix("gw")
    if not digits.isdigit():
        raise ValueError(f"unexpected xdist worker id {workerid!r}")
    return int(digits)
