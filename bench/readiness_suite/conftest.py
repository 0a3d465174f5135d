"""With READINESS_LOGS set, each process's harness log at DEBUG goes to a file of its own there
(what its forwards did while its services started), and SIGUSR1 writes its threads' stacks."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    folder = os.environ.get("READINESS_LOGS")
    if not folder:
        return
    name = os.environ.get("PYTEST_XDIST_WORKER", "controller")
    handler = logging.FileHandler(Path(folder) / f"{name}.log")
    handler.setFormatter(
        logging.Formatter("%(asctime)s.%(msecs)03d %(threadName)s %(name)s %(message)s", "%H:%M:%S")
    )
    handler.setLevel(logging.DEBUG)
    harness = logging.getLogger("testenv_harness")
    harness.setLevel(logging.DEBUG)
    harness.addHandler(handler)
    # `kill -USR1 <pid>` writes every thread's stack there too: where a worker waits.
    stacks = (Path(folder) / f"{name}.stacks").open("w")
    config.add_cleanup(stacks.close)
    faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
