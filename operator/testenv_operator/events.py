"""Kubernetes Events on TestEnvironments, each said once per state, so `kubectl describe te` tells
the story without repeating a line every pass.

An event is either an action (Provisioning, Repaired, ScaledDown, Deleting, Expired), posted each
time it happens, or a statement about a state that passes see again and again (a refused spec, a
namespace held by someone else, a phase). A statement is filed under its object and a topic; it
is posted when the topic's reason or message differs from what was last posted there, and the
topic is cleared when the state ends, so the same statement after a change is posted again.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, cast

import kopf


class EventPoster:
    """Posts through kopf (which writes them in the background); remembers statements per object."""

    def __init__(self) -> None:
        self._said: dict[tuple[str, str], tuple[str, str]] = {}
        self._lock = threading.Lock()  # passes of different environments run on several threads

    def action(self, body: Mapping[str, Any], reason: str, message: str, warning: bool = False) -> None:
        post = kopf.warn if warning else kopf.info
        post(cast(kopf.Body, body), reason=reason, message=message)

    def statement(
        self, body: Mapping[str, Any], topic: str, reason: str, message: str, warning: bool = False
    ) -> bool:
        """Post unless `topic` of this object last said exactly this; True if posted."""
        key = (str(body["metadata"]["uid"]), topic)
        with self._lock:
            if self._said.get(key) == (reason, message):
                return False
            self._said[key] = (reason, message)
        self.action(body, reason, message, warning)
        return True

    def problem(self, body: Mapping[str, Any], reason: str | None, message: str = "") -> None:
        """The object's one standing problem: a warning when it starts or changes (reason), or
        its end (None), after which the same problem is said again should it come back."""
        if reason:
            self.statement(body, "problem", reason, message, warning=True)
        else:
            self.clear(str(body["metadata"]["uid"]), "problem")

    def clear(self, uid: str, *topics: str) -> None:
        """The state behind these topics of the object ended (none named: nothing ends)."""
        with self._lock:
            for topic in topics:
                self._said.pop((uid, topic), None)

    def forget(self, uid: str) -> None:
        """The object is gone: drop all it said."""
        with self._lock:
            for key in [k for k in self._said if k[0] == uid]:
                del self._said[key]

    def topics(self, uid: str) -> set[str]:
        with self._lock:
            return {topic for (owner, topic) in self._said if owner == uid}
