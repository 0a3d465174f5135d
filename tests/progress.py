"""Progress lines of the test sessions' long set-ups (a cluster's), as pytest users see them."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest


def progress(config: pytest.Config, tag: str) -> Callable[[str], None]:
    """Where a session fixture says how a long set-up goes: the terminal, as a `[tag] ...` line.
    An xdist worker's terminal reporter writes nowhere, so there it goes to the stderr the worker
    shares with the run, named by the worker."""
    worker = getattr(config, "workerinput", {}).get("workerid")
    reporter = config.pluginmanager.get_plugin("terminalreporter")

    def report(line: str) -> None:
        if worker is not None and sys.__stderr__ is not None:
            sys.__stderr__.write(f"[{worker}] [{tag}] {line}\n")
            sys.__stderr__.flush()
        elif reporter is not None:
            reporter.write_line(f"[{tag}] {line}")

    return report
