"""A pytest plugin for bench/rerun.py: appends when each test's setup starts, when its body starts,
and when its teardown ends, to $BENCH_STAMPS.

Loaded with `-p stamps` (bench/ on PYTHONPATH) in the controller and, through xdist, in every
worker; each line is `setup|start|end <unix time>`, written with one O_APPEND write.
"""

from __future__ import annotations

import os
import time

import pytest


def _stamp(what: str) -> None:
    path = os.environ.get("BENCH_STAMPS")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{what} {time.time():.6f}\n".encode())
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
