"""A run's set-up taken partly ahead (while xdist starts its workers): only what makes nothing new,
and `start` goes on from there without taking a step twice."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from testenv_harness.run.options import RunOptions
from testenv_harness.run.session import RunSession, Step

MANIFEST = {"kind": "TestEnvironment", "spec": {"services": [{"name": "r", "type": "redis"}]}}


def _session(monkeypatch: pytest.MonkeyPatch, exists: bool, taken: list[str]) -> RunSession:
    session = RunSession(RunOptions(workers=1, manifest=MANIFEST, provider="local", cluster_name="x"), print)
    monkeypatch.setattr(session, "_provider", lambda: SimpleNamespace(exists=lambda: exists))

    def handoff() -> None:
        taken.append("handoff")
        session.handoff = SimpleNamespace()  # type: ignore[assignment]

    steps = [
        Step(name, lambda name=name: taken.append(name)) for name in ("cluster", "operator", "environment")
    ]
    monkeypatch.setattr(session, "steps", lambda: [*steps, Step("handoff", handoff)])
    return session


def test_ahead_takes_the_cluster_and_the_operator_and_start_takes_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    taken: list[str] = []
    session = _session(monkeypatch, exists=True, taken=taken)
    session.start_ahead()
    assert taken == ["cluster", "operator"]
    session.start()
    assert taken == ["cluster", "operator", "environment", "handoff"]
    assert [step.name for step in session.done] == taken
    session.remove_run_dir()


def test_ahead_makes_no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[str] = []
    session = _session(monkeypatch, exists=False, taken=taken)
    session.start_ahead()
    assert taken == []
    session.start()
    assert taken == ["cluster", "operator", "environment", "handoff"]
    session.remove_run_dir()
