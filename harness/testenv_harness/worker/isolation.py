"""Isolation helpers: names, ids and folders that no other worker or run of the suite uses."""

from __future__ import annotations

import itertools
import pickle
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from testenv_harness.ground.files import locked, write_atomic
from testenv_harness.worker.connection import topic_prefix
from testenv_harness.worker.handoff import Handoff

T = TypeVar("T")


class Isolation:
    """Per-worker names: topics, ids, a private folder, and values computed once per run."""

    def __init__(self, handoff: Handoff, worker: int) -> None:
        self.handoff = handoff
        self.worker = worker
        self.run_id = handoff.run_id
        self._ids = itertools.count(1)

    def topic(self, name: str, sep: str = ".") -> str:
        """A topic (Kafka, MQTT) name no other worker or run uses: `<run>-w<N><sep><name>`."""
        return f"{topic_prefix(self.run_id, self.worker, sep)}{name}"

    def strip(self, topic: str, sep: str = ".") -> str:
        """The name `topic()` was given; ValueError for a topic of another worker or run."""
        prefix = self.topic("", sep)
        if not topic.startswith(prefix):
            raise ValueError(f"{topic!r} is not a topic of this worker (expected the prefix {prefix!r})")
        return topic[len(prefix) :]

    def unique_id(self, prefix: str = "id") -> str:
        """An id no other test, worker or run produces."""
        return f"{prefix}-{self.run_id}-w{self.worker}-{next(self._ids)}-{uuid.uuid4().hex[:6]}"

    @property
    def tmp_path(self) -> Path:
        """A folder only this worker writes to, kept for the run."""
        path = self.handoff.run_path / "workers" / f"w{self.worker}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def shared_cache(self, key: str, compute: Callable[[], T]) -> T:
        """Compute a value once per run, under a file lock; every worker gets that same value."""
        folder = self.handoff.run_path / "shared"
        folder.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        target = folder / f"{safe}.pickle"
        with locked(folder / f"{safe}.lock"):
            if target.exists():
                value: T = pickle.loads(target.read_bytes())
                return value
            value = compute()
            write_atomic(target, pickle.dumps(value))
            return value
