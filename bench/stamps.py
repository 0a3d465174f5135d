"""A pytest plugin for bench/rerun.py: appends when each test's setup starts, when its body starts,
and when its teardown ends, to $BENCH_STAMPS.

Loaded with `-p stamps` (bench/ on PYTHONPATH) in the controller and, through xdist, in every
worker; each line is `setup|start|end <unix time> <xdist worker id or "main">`, written with one
O_APPEND write.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent


def stamped_pytest(workers: int) -> tuple[Path, dict[str, str], list[str]]:
    """For a bench's pytest run with this plugin: the stamps file, the environment that names it
    (bench/ on PYTHONPATH), and `python -m pytest -p stamps -n WORKERS` to extend."""
    stamps = Path(tempfile.mkstemp(prefix="stamps-")[1])
    env = {
        **os.environ,
        "BENCH_STAMPS": str(stamps),
        "PYTHONPATH": f"{BENCH}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    return stamps, env, [sys.executable, "-m", "pytest", "-p", "stamps", "-n", str(workers)]


def read_stamps(stamps: Path) -> dict[str, list[float]]:
    """The times written, by what they mark (setup, start, end), and each also by worker under
    `WHAT@WORKER` (`start@gw2`); the file is removed."""
    marks: dict[str, list[float]] = {"setup": [], "start": [], "end": []}
    for line in stamps.read_text().splitlines():
        what, at, *worker = line.split()
        marks.setdefault(what, []).append(float(at))
        if worker:
            marks.setdefault(f"{what}@{worker[0]}", []).append(float(at))
    stamps.unlink()
    return marks


def every_worker_first(marks: dict[str, list[float]], what: str = "start") -> float | None:
    """The time by which every worker had begun its first test body: the latest of their firsts."""
    firsts = [min(times) for key, times in marks.items() if key.startswith(f"{what}@") and times]
    return max(firsts) if firsts else None


def _stamp(what: str) -> None:
    path = os.environ.get("BENCH_STAMPS")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            os.write(fd, f"{what} {time.time():.6f} {worker}\n".encode())
        finally:
            os.close(fd)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _stamp("setup")  # pytest is ready to run a test: its own start-up (and collection) is over


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    _stamp("start")  # the test's own code: its fixtures (services included) are ready


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    _stamp("end")
