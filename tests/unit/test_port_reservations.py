"""Ports a run forwards but did not plan (a pool's, for the workers it claimed) are reserved on
this machine like its own block: another run plans around them, and a clash is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from testenv_harness.ground import localports


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KUBE_TESTENV_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_fresh_block_keeps_clear_of_ports_a_claim_forwards() -> None:
    start = 27000
    claimed = {start, start + 1, start + 2, start + 7}
    assert localports.reserve_ports("claimer", claimed, "w0") == []
    base = localports.reserve_block(4, "fresh", start=start, stop=start + 100)
    assert base == start + 3, "the first gap of four ports between the claimed ones"
    assert not claimed & set(range(base, base + 4))
    assert localports.reserve_block(2, "next", start=start, stop=start + 100) == start + 8
    localports.release_block("claimer")
    assert localports.reserve_block(2, "later", start=start, stop=start + 100) == start


def test_ports_another_run_holds_are_named() -> None:
    base = localports.reserve_block(3, "planner", start=27200, stop=27300)
    assert localports.reserve_ports("claimer", [base + 1, base + 50], "w1") == [base + 1]


def test_a_run_releases_what_it_reserved_besides_its_block(cache: Path) -> None:
    localports.reserve_block(2, "run1", start=27400, stop=27500)
    localports.reserve_ports("run1", [27550, 27551, 27600], "w0")
    folder = cache / "port-reservations"
    assert len(list(folder.glob("run1*.block"))) == 3
    localports.release_block("run1")
    assert not list(folder.glob("run1*.block"))
